//! Targets for the engine. For now `exec`: commands on this machine.
