#!/usr/bin/env bash
# The local quickstart: a simulated five-node WSO2 API Manager 3.2 cluster on this machine.
#
#   deploy/quickstart.sh          build, start a controller and one agent per simulated machine
#                                 (each with its own 127.x address, install root and hosts file
#                                 under ./.quickstart/), apply the plan, print the status; exits 0
#                                 once every node is healthy and leaves everything running.
#   deploy/quickstart.sh --db mariadb|postgres
#                                 the same on a local MariaDB or PostgreSQL server that is
#                                 running (the default is the packs' own H2): apimctl creates the
#                                 schemas; the message says how to start a server when none runs.
#   deploy/quickstart.sh --hosts  (as root; combines with --db) the same with every simulated
#                                 machine a host: its own network namespace on a private bridge
#                                 (10.250.<n>.0/24, existing only inside the namespaces) and its
#                                 own mount namespace, where its agent edits the real /etc/hosts
#                                 path (a private copy is mounted there; the host's own file is
#                                 never touched); the controller in its own network namespace.
#                                 The namespaces outlive the script; ./.quickstart/apimctl runs
#                                 apimctl in the controller's. Not root: it refuses, saying why.
#   deploy/quickstart.sh --down   stop it all (controller, agents, simulated servers; with
#                                 --hosts also the namespaces, their mounts, bridge and links).
#
# Re-running it is safe: running daemons (and --hosts namespaces) are reused and re-applying the
# same plan changes nothing; a folder keeps the mode it was made in (--down and remove it to
# switch). Needs cargo and a JDK keytool (JDK 11+) on PATH or JAVA_HOME; --hosts also iproute2
# and util-linux (ip, nsenter, unshare). Without --hosts nothing runs as root and nothing outside
# ./.quickstart/ is touched (the hosts files are simulated per machine). APIM_QUICKSTART_DIR
# sets another folder than ./.quickstart/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
dir="${APIM_QUICKSTART_DIR:-$here/.quickstart}"
target="${CARGO_TARGET_DIR:-$here/target}"

usage="usage: $0 [--hosts] [--db mariadb|postgres] | --down"
if [ "${1:-}" = --down ]; then
  [ $# -eq 1 ] || { echo "$usage" >&2; exit 2; }
  if [ ! -x "$target/debug/apim-e2e-quickstart" ]; then
    cargo build --quiet -p apim-e2e --bin apim-e2e-quickstart
  fi
  exec "$target/debug/apim-e2e-quickstart" down "$dir"
fi
args=()
hosts=
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts)
      [ -z "$hosts" ] || { echo "$usage" >&2; exit 2; }
      hosts=1
      args+=(--hosts)
      shift
      ;;
    --db)
      case "${2:-}" in
        mariadb|mysql|postgres|postgresql) args+=(--db "$2"); shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
      esac
      ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
if [ -n "$hosts" ] && [ "$(id -u)" -ne 0 ]; then
  echo "quickstart: --hosts needs root: it gives every simulated machine its own network and" \
    "mount namespace (CAP_SYS_ADMIN, CAP_NET_ADMIN). Run it as root, or run plain" \
    "deploy/quickstart.sh, which works without root." >&2
  exit 1
fi

echo "building apimctl, apim-agent and the simulated WSO2 server (cargo build)..."
cargo build --bins -p apimctl -p apim-agent -p apim-e2e
APIM_E2E_NO_BUILD=1 exec "$target/debug/apim-e2e-quickstart" up "$dir" ${args[@]+"${args[@]}"}
