#!/usr/bin/env bash
# Fleet deploy over SSH: the same three-step task on the same N OpenSSH hosts with
# `slipway deploy` (ssh target), ansible-core and pyinfra, in one run, and a table of the
# median wall time of a first deploy and of a no-change re-run per tool.
#
# Usage: crates/slipway-cli/benches/fleet_deploy.sh
#   HOSTS=20 REPS=3 PAR2=5 DEPLOY_USER=deploy TOOLS="slipway ansible pyinfra"
#   SLIPWAY_BIN=path (a given slipway binary instead of building one: A/B of two builds)
#   CONNECTS=n (the inventory's `connect_parallelism`; unset: Slipway's default)
#   In TOOLS, `slipway@N` is Slipway with `connect_parallelism: N`, and `base` (`base@N`)
#   the binary SLIPWAY_BASE=path: several Slipway rows in one run (A/B, tuning)
#   TIMELINE=dir (each Slipway deploy's per-host phase timeline kept there, one file a
#   deploy, named by its start time: see crates/slipway-providers/src/ssh/timeline.rs)
#   SSHD_LOG=DEBUG (the hosts' sshd LogLevel, default ERROR; at DEBUG the script ends with
#   the channels and logins the hosts saw, all tools and runs together: run one tool)
#   HOST_FS=tmpfs|disk (where the hosts' own directories are: see "The hosts' file system")
#   (environment overrides; PAR2= empty skips Slipway's second pass at parallelism 5)
#
# The repetitions are interleaved: repetition 1 of every tool (and Slipway configuration),
# then repetition 2, ..., each round starting with the next tool, so that drift of the
# machine during the run (a neighbour's build starting, or ending) falls on every tool.
#
# Hosts: HOSTS sshd on 127.0.0.1, each on a free port with its own generated ed25519 host
# key; one known_hosts file holding every host key, one client key. Every tool checks
# host keys strictly against that known_hosts file (nothing trusted on first use) and
# logs in as DEPLOY_USER (created with `useradd` when run as root and missing): root's
# shell rc here runs pyenv (+0.25 s per session), which would tax every tool's sessions.
#
# The hosts' file system: each host's ROOT (the task's files, Slipway's state directory)
# is on a tmpfs (/dev/shm) by default, everything else (keys, each tool's own state,
# Slipway's SQLite store) in a temporary directory on disk. Here the hosts share one file
# system, which a fleet never does, and each repetition deletes the thousands of files
# the last one created. On an ext4 without a journal (this VM's root file system) a new
# inode skips every free inode of its group deleted in the last 60-360 s
# (`recently_deleted`, fs/ext4/ialloc.c, no-journal mode only), so every file a deploy
# creates cost more the more the benchmark had deleted before it, and a tool's times grew
# rep after rep with the number of files it creates on the hosts (Slipway's first deploy
# at 200 hosts 4.90 -> 8.25 s over five reps, the hosts' kernel time 7.2 -> 11.7 CPU s; a
# perf profile put 8% of all samples in `recently_deleted`). HOST_FS=disk keeps them on
# disk. docs/benchmarks-history.md has the measurements.
#
# The task, identical shell text for every tool, with ROOT (a directory of this host's
# own, standing for its file system) and HOST (its inventory name) in the environment:
#   1. install  mkdir -p "$ROOT/app"; echo x >> "$ROOT/app/installs";
#               echo "1.0.0 on $HOST" > "$ROOT/app/VERSION"                (runs every time)
#   2. init     echo init >> "$ROOT/app/init.log"; touch "$ROOT/app/initialized"
#               guarded by creates: $ROOT/app/initialized                  (skipped on re-run)
#   3. check    test "$(cat "$ROOT/app/VERSION")" = "1.0.0 on $HOST"        (runs every time)
# Slipway runs each host's steps through one long-lived helper process per connection (a
# Perl script started on the first step: a fork and the step's `sh` per step, no channel;
# the wrapper shell per step where perl is missing) with its exactly-once lock and markers.
# Slipway: the steps of one service run at once (a wave's steps are not ordered), so the
# three are one-step services chained by `depends_on` (three waves, in order, as ansible's
# tasks); `creates: app/initialized` is relative to the host's `workdir` (its ROOT); ansible: `shell` with `creates:`; pyinfra has no
# `creates` on server.shell, so the guard is `test -e ... ||` in the command (same check,
# on the host). After each tool's first run and re-run every host is verified: VERSION
# right, `installs` has 2 lines (the re-run did run on every host: no tool is timed
# doing nothing), `init.log` has 1 line (the guard held).
#
# Equivalence: parallelism = forks = --parallel = HOSTS. Ansible: its defaults otherwise
# (ssh_args -C -o ControlMaster=auto -o ControlPersist=60s, so its re-run reuses the
# first run's connections), pipelining on, gather_facts off, interpreter_python set
# (no discovery round trip). Its first runs each start with no control master (a fresh
# control_path_dir); its re-run is also timed once more after the masters are closed
# ("cold"), since Slipway and pyinfra open new connections on every invocation.
# Slipway: a fresh SQLite store and fresh host directories per repetition; the re-run is
# a second `slipway deploy` of the same release (a new run). The tools are invoked by
# their real paths (not pyenv's shims). Loopback only; everything started here is stopped
# by PID on exit.
set -euo pipefail

HOSTS=${HOSTS:-20}
REPS=${REPS:-3}
PAR2=${PAR2-5}
DEPLOY_USER=${DEPLOY_USER:-deploy}
TOOLS=${TOOLS:-slipway ansible pyinfra}

ROOT_DIR=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT_DIR"
PATH=$PATH:/usr/sbin
for tool in sshd ssh-keygen ssh; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y openssh-server openssh-client" >&2; exit 1; }
done

if [ -n "${SLIPWAY_BIN:-}" ]; then
  SLIPWAY=$SLIPWAY_BIN
elif [[ " $TOOLS " == *" slipway"* ]]; then
  cargo build --release --quiet -p slipway-cli --bin slipway
  TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  SLIPWAY=$TARGET/release/slipway
fi

# The peers, installed with pip when missing; resolved to their real paths so that a
# pyenv shim (a shell script) is not counted in their times.
real_path() {
  if command -v pyenv >/dev/null; then pyenv which "$1" 2>/dev/null || command -v "$1"; else command -v "$1"; fi
}
if [[ " $TOOLS " == *" ansible "* || " $TOOLS " == *" pyinfra "* ]]; then
  if ! command -v ansible-playbook >/dev/null || ! command -v pyinfra >/dev/null; then
    pip install -q ansible-core pyinfra || echo "pip install ansible-core pyinfra failed" >&2
    hash -r
  fi
fi
SKIPPED=()
ANSIBLE=""; PYINFRA=""
if [[ " $TOOLS " == *" ansible "* ]]; then
  ANSIBLE=$(real_path ansible-playbook || true)
  [ -n "$ANSIBLE" ] || SKIPPED+=("ansible-core: ansible-playbook not installed (pip install ansible-core failed)")
fi
if [[ " $TOOLS " == *" pyinfra "* ]]; then
  PYINFRA=$(real_path pyinfra || true)
  [ -n "$PYINFRA" ] || SKIPPED+=("pyinfra: not installed (pip install pyinfra failed)")
fi

if ! id "$DEPLOY_USER" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    useradd -m -s /bin/bash -p '*' "$DEPLOY_USER"
  else
    echo "user $DEPLOY_USER missing and not root: DEPLOY_USER=$(id -un) logs in as yourself" >&2
    exit 1
  fi
fi

WORK=$(mktemp -d)
chmod 755 "$WORK"
HOST_FS=${HOST_FS:-tmpfs}
case $HOST_FS in
  tmpfs)
    [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] \
      || { echo "HOST_FS=tmpfs: /dev/shm is not a tmpfs here (HOST_FS=disk puts the hosts' directories on disk)" >&2; exit 1; }
    ROOTS=$(mktemp -d -p /dev/shm fleet-roots.XXXXXX) ;;
  disk) ROOTS=$WORK/roots ;;
  *) echo "HOST_FS=$HOST_FS: tmpfs or disk" >&2; exit 1 ;;
esac
chmod 755 "$ROOTS"
PIDS=()
cleanup() {
  close_masters "$WORK/cp" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK" "$ROOTS"
}
trap cleanup EXIT

# Closes ansible's ControlPersist masters under a control_path_dir (`ssh -O exit` on each
# socket: they are ansible's children's children, not ours to kill by PID).
close_masters() {
  local dir=$1 s
  [ -d "$dir" ] || return 0
  for s in "$dir"/*; do
    [ -S "$s" ] && ssh -o ControlPath="$s" -O exit dummy >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}

# --- the hosts ---------------------------------------------------------------------------
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N "" -C fleet-bench -f "$WORK/id_ed25519"
cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"
chmod 644 "$WORK/authorized_keys"
mapfile -t PORTS < <(/usr/bin/python3 - "$HOSTS" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
for s in socks:
    print(s.getsockname()[1])
PY
)
: >"$WORK/known_hosts"
for i in $(seq 1 "$HOSTS"); do
  h=$WORK/host$i port=${PORTS[$((i - 1))]}
  mkdir -p "$h"
  ssh-keygen -q -t ed25519 -N "" -C "host$i" -f "$h/host_key"
  cat >"$h/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $h/host_key
PidFile $h/sshd.pid
AuthorizedKeysFile $WORK/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PubkeyAuthentication yes
MaxStartups 200
MaxSessions 50
LogLevel ${SSHD_LOG:-ERROR}
EOF
  /usr/sbin/sshd -D -e -f "$h/sshd_config" 2>"$h/sshd.log" &
  PIDS+=($!)
  echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$h/host_key.pub")" >>"$WORK/known_hosts"
done
for i in $(seq 1 "$HOSTS"); do
  port=${PORTS[$((i - 1))]}
  for _ in $(seq 1 200); do
    banner=$(timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && head -c4 <&3" 2>/dev/null || true)
    [ "$banner" = "SSH-" ] && break
    sleep 0.05
  done
  [ "$banner" = "SSH-" ] || { echo "sshd host$i did not listen on $port: $(cat "$WORK/host$i/sshd.log")" >&2; exit 1; }
done
SSH_OPTS=(-F /dev/null -i "$WORK/id_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes
  -o UserKnownHostsFile="$WORK/known_hosts" -o StrictHostKeyChecking=yes -o ConnectTimeout=5)
ssh "${SSH_OPTS[@]}" -p "${PORTS[0]}" "$DEPLOY_USER@127.0.0.1" true \
  || { echo "cannot log in as $DEPLOY_USER on host1" >&2; exit 1; }

# Fresh, empty host directories for a tool (owned by the deploy user).
fresh_roots() {
  local base=$ROOTS/$1
  rm -rf "$base"
  mkdir -p "$base"
  for i in $(seq 1 "$HOSTS"); do mkdir -p "$base/host$i"; done
  chown -R "$DEPLOY_USER" "$base"
}

# Every host has the release and ran the task twice (first run + re-run), init once.
verify() {
  local tool=$1 base=$ROOTS/$1 i bad=0
  for i in $(seq 1 "$HOSTS"); do
    local r=$base/host$i/app
    if [ "$(cat "$r/VERSION" 2>/dev/null)" != "1.0.0 on host$i" ] \
      || [ "$(wc -l <"$r/installs" 2>/dev/null)" != 2 ] \
      || [ "$(wc -l <"$r/init.log" 2>/dev/null)" != 1 ]; then
      echo "$tool: host$i is not as expected: VERSION=$(cat "$r/VERSION" 2>/dev/null) installs=$(wc -l <"$r/installs" 2>/dev/null) init=$(wc -l <"$r/init.log" 2>/dev/null)" >&2
      bad=1
    fi
  done
  [ "$bad" = 0 ] || { echo "$tool did not deploy to every host: its times are not reported" >&2; exit 1; }
}

# Wall seconds of a command (its output to $WORK/last.log; a failure stops the bench).
timed() {
  local start end
  start=$(date +%s.%N)
  if ! "$@" >"$WORK/last.log" 2>&1; then
    echo "failed: $*" >&2; tail -40 "$WORK/last.log" >&2; exit 1
  fi
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : sprintf("%.2f", (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

ROWS=()
row() { ROWS+=("| $1 | $HOSTS | $2 | $3 | $4 | $5 |"); }

CMD_INSTALL='mkdir -p "$ROOT/app"; echo x >> "$ROOT/app/installs"; echo "1.0.0 on $HOST" > "$ROOT/app/VERSION"'
CMD_INIT='echo init >> "$ROOT/app/init.log"; touch "$ROOT/app/initialized"'
CMD_CHECK='test "$(cat "$ROOT/app/VERSION")" = "1.0.0 on $HOST"'

# --- Slipway -----------------------------------------------------------------------------
slipway_spec() {
  local par=$1 spec=$WORK/slipway i
  rm -rf "$spec"; mkdir -p "$spec"
  {
    echo "known_hosts: $WORK/known_hosts"
    echo "identity: $WORK/id_ed25519"
    echo "user: $DEPLOY_USER"
    [ -z "${CONNECTS:-}" ] || echo "connect_parallelism: $CONNECTS"
    echo "hosts:"
    for i in $(seq 1 "$HOSTS"); do
      local r=$ROOTS/slipway/host$i
      echo "  - { name: host$i, address: 127.0.0.1, port: ${PORTS[$((i - 1))]}, workdir: $r, state_dir: $r/.state, env: { ROOT: $r, HOST: host$i } }"
    done
    echo "groups:"
    echo "  all: [$(seq -f 'host%g' -s ', ' 1 "$HOSTS")]"
  } >"$spec/hosts.yaml"
  cat >"$spec/release.yaml" <<EOF
apiVersion: slipway/v1
kind: Release
metadata: { name: fleet, version: 1.0.0, type: patch }
services:
  install:
    steps: [{ name: install, run: '$CMD_INSTALL' }]
  init:
    depends_on: [install]
    steps: [{ name: init, creates: app/initialized, run: '$CMD_INIT' }]
  check:
    depends_on: [init]
    steps: [{ name: check, run: '$CMD_CHECK' }]
environments:
  fleet:
    target: { ssh: { inventory: hosts.yaml, group: all, parallelism: $par } }
EOF
}
# With TIMELINE=dir, each deploy's phase timeline (SLIPWAY_SSH_TIMELINE) is kept there.
slipway_deploy() {
  local tl=()
  if [ -n "${TIMELINE:-}" ]; then
    mkdir -p "$TIMELINE"
    tl=(SLIPWAY_SSH_TIMELINE="$TIMELINE/slipway-$(date +%s.%N).log")
  fi
  env "${tl[@]}" SLIPWAY_STORE="sqlite://$WORK/slipway/store.db" NO_COLOR=1 \
    "$BIN" deploy --env fleet -f "$WORK/slipway/release.yaml"
}
# One repetition of a Slipway configuration (a first deploy, a re-run, the hosts checked),
# its times appended to FIRST/AGAIN under the configuration's name.
# rep_slipway NAME PARALLELISM BINARY [CONNECT_PARALLELISM]
rep_slipway() {
  local name=$1 par=$2 BIN=$3 CONNECTS=${4:-}
  fresh_roots slipway
  slipway_spec "$par"
  FIRST[$name]+=" $(timed slipway_deploy)"
  AGAIN[$name]+=" $(timed slipway_deploy)"
  verify slipway
}
# The table row of a Slipway configuration (same arguments).
row_slipway() {
  local name=$1 par=$2 BIN=$3 CONNECTS=${4:-} label=""
  [ "$BIN" = "${SLIPWAY:-}" ] || label=" $BIN"
  [ -z "$CONNECTS" ] || label="$label, connect_parallelism $CONNECTS"
  echo "slipway$label parallelism $par: first${FIRST[$name]}; re-run${AGAIN[$name]}" >&2
  # The step helper is this tree's; a `base` binary (SLIPWAY_BASE) may predate it.
  local helper=", its steps run by one helper process per host (perl)"
  [ "$BIN" = "${SLIPWAY:-}" ] || helper=""
  # shellcheck disable=SC2086 # the samples are space-separated words on purpose
  row "Slipway $("$BIN" --version | awk '{print $NF}') (\`slipway deploy\`, ssh target$label)" "$par" \
    "$(median ${FIRST[$name]})" "$(median ${AGAIN[$name]})" \
    "one process (russh); host keys checked on every host before the run starts, then one session per host for the run$helper"
}

# --- ansible-core ------------------------------------------------------------------------
ansible_setup() {
  local a=$WORK/ansible i
  mkdir -p "$a"
  {
    echo "[fleet]"
    for i in $(seq 1 "$HOSTS"); do
      echo "host$i ansible_host=127.0.0.1 ansible_port=${PORTS[$((i - 1))]} root=$ROOTS/ansible/host$i"
    done
    echo "[fleet:vars]"
    echo "ansible_user=$DEPLOY_USER"
    echo "ansible_ssh_private_key_file=$WORK/id_ed25519"
    echo "ansible_python_interpreter=/usr/bin/python3"
  } >"$a/inventory.ini"
  cat >"$a/ansible.cfg" <<EOF
[defaults]
inventory = $a/inventory.ini
forks = $HOSTS
host_key_checking = True
gathering = explicit
local_tmp = $a/tmp
retry_files_enabled = False
[ssh_connection]
pipelining = True
ssh_args = -C -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=$WORK/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes
control_path_dir = $WORK/cp
EOF
  cat >"$a/site.yml" <<EOF
- hosts: fleet
  gather_facts: false
  environment: { ROOT: "{{ root }}", HOST: "{{ inventory_hostname }}" }
  tasks:
    - name: install
      shell: '$CMD_INSTALL'
    - name: init
      shell: '$CMD_INIT'
      args: { creates: "{{ root }}/app/initialized" }
    - name: check
      shell: '$CMD_CHECK'
EOF
}
ansible_run() { ANSIBLE_CONFIG=$WORK/ansible/ansible.cfg "$ANSIBLE" "$WORK/ansible/site.yml"; }
rep_ansible() {
  fresh_roots ansible
  close_masters "$WORK/cp"
  FIRST[ansible]+=" $(timed ansible_run)"
  AGAIN[ansible]+=" $(timed ansible_run)"
  verify ansible
  close_masters "$WORK/cp"
  # One more no-change run with no control master left (its `installs` count is 3 now).
  COLD[ansible]+=" $(timed ansible_run)"
  close_masters "$WORK/cp"
}
row_ansible() {
  echo "ansible: first${FIRST[ansible]}; re-run${AGAIN[ansible]}; cold re-run${COLD[ansible]}" >&2
  # shellcheck disable=SC2086
  row "ansible-core $("$ANSIBLE" --version 2>/dev/null | sed -n 1p | sed 's/.*core \([0-9.]*\).*/\1/')" "$HOSTS" \
    "$(median ${FIRST[ansible]})" "$(median ${AGAIN[ansible]})" \
    "re-run reuses the first run's ControlPersist connections; with them closed first: $(median ${COLD[ansible]}) s"
}

# --- pyinfra -----------------------------------------------------------------------------
pyinfra_setup() {
  local p=$WORK/pyinfra i
  mkdir -p "$p"
  {
    echo "hosts = ["
    for i in $(seq 1 "$HOSTS"); do
      echo "  ('host$i', {'ssh_hostname': '127.0.0.1', 'ssh_port': ${PORTS[$((i - 1))]}, 'root': '$ROOTS/pyinfra/host$i'}),"
    done
    echo "]"
  } >"$p/inventory.py"
  mkdir -p "$p/group_data"
  cat >"$p/group_data/all.py" <<EOF
ssh_user = '$DEPLOY_USER'
ssh_key = '$WORK/id_ed25519'
ssh_known_hosts_file = '$WORK/known_hosts'
ssh_strict_host_key_checking = 'yes'
ssh_allow_agent = False
ssh_look_for_keys = False
EOF
  cat >"$p/deploy.py" <<EOF
from pyinfra import host
from pyinfra.operations import server

env = {'ROOT': host.data.root, 'HOST': host.name}
server.shell(name='install', commands=[r'''$CMD_INSTALL'''], _env=env)
server.shell(name='init', commands=[r'''test -e "\$ROOT/app/initialized" || { $CMD_INIT; }'''], _env=env)
server.shell(name='check', commands=[r'''$CMD_CHECK'''], _env=env)
EOF
}
pyinfra_run() { (cd "$WORK/pyinfra" && "$PYINFRA" -y --parallel "$HOSTS" inventory.py deploy.py); }
# A trial run first: pyinfra is skipped (with the reason) when it does not work here.
pyinfra_works() {
  pyinfra_setup
  fresh_roots pyinfra
  if ! (pyinfra_run >"$WORK/pyinfra-trial.log" 2>&1); then
    SKIPPED+=("pyinfra: a trial run failed: $(grep -v '^\s*$' "$WORK/pyinfra-trial.log" | tail -3 | tr '\n' ' ')")
    return 1
  fi
}
rep_pyinfra() {
  fresh_roots pyinfra
  FIRST[pyinfra]+=" $(timed pyinfra_run)"
  AGAIN[pyinfra]+=" $(timed pyinfra_run)"
  verify pyinfra
}
row_pyinfra() {
  echo "pyinfra: first${FIRST[pyinfra]}; re-run${AGAIN[pyinfra]}" >&2
  # shellcheck disable=SC2086
  row "pyinfra $("$PYINFRA" --version | awk '{print $2}')" "$HOSTS" \
    "$(median ${FIRST[pyinfra]})" "$(median ${AGAIN[pyinfra]})" \
    "paramiko; \`creates\` guard written into the command (server.shell has none)"
}

# --- the runs ----------------------------------------------------------------------------
# Every configuration to time (a tool, or a Slipway parallelism/binary/connect bound), as
# `KIND NAME ARGS...`; the rows come out in this order.
declare -A FIRST=() AGAIN=() COLD=()
CONFIGS=()
for t in $TOOLS; do
  case $t in
    slipway)
      CONFIGS+=("slipway slipway/$HOSTS $HOSTS $SLIPWAY ${CONNECTS:-}")
      [ -z "$PAR2" ] || [ "$PAR2" = "$HOSTS" ] || CONFIGS+=("slipway slipway/$PAR2 $PAR2 $SLIPWAY ${CONNECTS:-}") ;;
    slipway@*) CONFIGS+=("slipway $t $HOSTS $SLIPWAY ${t#slipway@}") ;;
    base | base@*)
      [ -n "${SLIPWAY_BASE:-}" ] || { echo "tool $t needs SLIPWAY_BASE=path" >&2; exit 1; }
      c=${CONNECTS:-}; [ "$t" = base ] || c=${t#base@}
      CONFIGS+=("slipway $t $HOSTS $SLIPWAY_BASE $c") ;;
    ansible) [ -z "$ANSIBLE" ] || { ansible_setup; CONFIGS+=("ansible"); } ;;
    pyinfra) [ -z "$PYINFRA" ] || ! pyinfra_works || CONFIGS+=("pyinfra") ;;
    *) echo "unknown tool $t (slipway, slipway@N, base, base@N, ansible, pyinfra)" >&2; exit 1 ;;
  esac
done
# Interleaved: repetition 1 of every configuration, then repetition 2, ..., each round
# starting one configuration further on, so that a machine slowing down (or speeding up)
# during the run weighs on every tool alike, and no tool always follows the same one.
N=${#CONFIGS[@]}
for r in $(seq 1 "$REPS"); do
  for k in $(seq 0 $((N - 1))); do
    read -r -a c <<<"${CONFIGS[$(((k + r - 1) % N))]}"
    "rep_${c[0]}" "${c[@]:1}"
  done
done
for cfg in "${CONFIGS[@]}"; do
  read -r -a c <<<"$cfg"
  "row_${c[0]}" "${c[@]:1}"
done

echo
echo "$HOSTS sshd on 127.0.0.1 (OpenSSH $(ssh -V 2>&1 | sed 's/OpenSSH_\([^ ,]*\).*/\1/')), user $DEPLOY_USER, hosts' directories on $HOST_FS, $(nproc) cores, Linux $(uname -r); median of $REPS"
echo
echo "| tool | hosts | parallelism / forks | first deploy (s) | no-change re-run (s) | notes |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
for s in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do echo; echo "skipped: $s"; done
if [[ "${SSHD_LOG:-}" == DEBUG* ]]; then
  # What the hosts saw, all runs together (the login of the script's own check included).
  logs=("$WORK"/host*/sshd.log)
  echo
  echo "sshd on $HOSTS hosts saw: $(cat "${logs[@]}" | grep -c 'Accepted publickey') logins," \
    "$(cat "${logs[@]}" | grep -c 'server_input_channel_open: ctype session') session channels," \
    "$(cat "${logs[@]}" | grep -c 'server_input_channel_req: channel [0-9]* request exec') exec requests"
fi
