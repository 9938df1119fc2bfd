#!/usr/bin/env bash
# Deploy a release through a Slipway server from a CI job, and give the job the result
# Slipway decided. Copy it into your repository as ci/slipway-deploy.sh.
#
#   SLIPWAY_SERVER   the server's URL (https://slipway.example.com)
#   SLIPWAY_TOKEN    a deployer's API token for the environment (a CI secret; never echoed)
#   SLIPWAY_ENV      the environment to deploy to
#   SLIPWAY_SPEC     the release spec (default release.yaml); its directory is uploaded
#   SLIPWAY_TIMEOUT  seconds the job waits for the run (default 3600); the run itself goes
#                    on in the server when the job gives up
#
# The job's exit code is Slipway's: 0 succeeded; 2 invalid spec; 3 refused by a gate
# (approvals, window, freeze, a blocking finding, a role the token lacks) or the timeout
# passed; 4 rolled back; 5 paused, waiting for a human; 6 aborted; 9 bad token; 10 some
# services were not deployed. A pipeline may treat 5 as a warning (GitLab:
# allow_failure: exit_codes: [5]).
set -uo pipefail
: "${SLIPWAY_SERVER:?set SLIPWAY_SERVER to the Slipway server URL}"
: "${SLIPWAY_TOKEN:?set SLIPWAY_TOKEN from a CI secret}"
: "${SLIPWAY_ENV:?set SLIPWAY_ENV to the environment to deploy to}"
spec=${SLIPWAY_SPEC:-release.yaml}

run=$(slipway deploy -f "$spec" --env "$SLIPWAY_ENV" --detach)
code=$?
if [ "$code" -ne 0 ]; then
  echo "slipway did not start the deploy (exit $code); its message is above" >&2
  exit "$code"
fi
echo "run $run started on $SLIPWAY_SERVER (environment $SLIPWAY_ENV)"

slipway wait "$run" --timeout "${SLIPWAY_TIMEOUT:-3600}"
code=$?
# The run's journal, for the job log (secrets are redacted by Slipway).
slipway logs "$run" || true
case "$code" in
  0) echo "run $run succeeded" ;;
  3) echo "run $run did not finish within ${SLIPWAY_TIMEOUT:-3600}s; it goes on in the server: slipway wait $run" >&2 ;;
  4) echo "run $run was rolled back; why: slipway status $run" >&2 ;;
  5) echo "run $run is paused, waiting for a human: slipway resume|promote|abort $run" >&2 ;;
  6) echo "run $run was aborted" >&2 ;;
  10) echo "run $run deployed only part of the release: slipway status $run" >&2 ;;
  *) echo "run $run failed (exit $code): slipway status $run" >&2 ;;
esac
exit "$code"
