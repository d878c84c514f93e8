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
#   deploy/quickstart.sh --down   stop it all (controller, agents, simulated servers).
#
# Re-running it is safe: running daemons are reused and re-applying the same plan changes
# nothing. Needs cargo and a JDK keytool (JDK 11+) on PATH or JAVA_HOME. Nothing runs as root
# and nothing outside ./.quickstart/ is touched (the hosts files are simulated per machine).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
dir="${APIM_QUICKSTART_DIR:-$here/.quickstart}"
target="${CARGO_TARGET_DIR:-$here/target}"

case "${1:-}" in
  --down)
    if [ -x "$target/debug/apim-e2e-quickstart" ]; then
      exec "$target/debug/apim-e2e-quickstart" down "$dir"
    fi
    cargo build --quiet -p apim-e2e --bin apim-e2e-quickstart
    exec "$target/debug/apim-e2e-quickstart" down "$dir"
    ;;
  "" ) set -- ;;
  --db)
    case "${2:-}" in
      mariadb|mysql|postgres|postgresql) set -- --db "$2" ;;
      *) echo "usage: $0 [--db mariadb|postgres | --down]" >&2; exit 2 ;;
    esac
    ;;
  *)
    echo "usage: $0 [--db mariadb|postgres | --down]" >&2
    exit 2
    ;;
esac

echo "building apimctl, apim-agent and the simulated WSO2 server (cargo build)..."
cargo build --bins -p apimctl -p apim-agent -p apim-e2e
APIM_E2E_NO_BUILD=1 exec "$target/debug/apim-e2e-quickstart" up "$dir" "$@"
