#!/usr/bin/env bash
# Installs apimctl on this host: the binary, the systemd unit(s), a default config, users and
# directories. Idempotent: running it again changes nothing that is already in place and never
# overwrites an existing config.
#   deploy/install.sh controller [--bin PATH]     # the controller host
#   deploy/install.sh agent [--bin PATH] --controller HOST:PORT[,HOST:PORT...] --machine NAME
#                                                # every VM (agent binary: apim-agent); put the
#                                                # join token in /etc/apim-agent/token (0600);
#                                                # several controllers: a comma-separated list
set -euo pipefail

role="${1:-}"
shift || true
here="$(cd "$(dirname "$0")" && pwd)"
bin=""
controller=""
machine=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --controller) controller="$2"; shift 2 ;;
    --machine) machine="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 1 ;;
  esac
done
prefix="${PREFIX:-/usr/local}"
unitdir="${UNITDIR:-/etc/systemd/system}"
if [ "$role" = agent ]; then confdir="${CONFDIR:-/etc/apim-agent}"; else confdir="${CONFDIR:-/etc/apimctl}"; fi

case "$role" in
  controller)
    name=apimctl; unit=apimctl-controller.service
    [ -n "$bin" ] || bin="$here/../target/release/apimctl" ;;
  agent)
    name=apim-agent; unit=apim-agent.service
    [ -n "$bin" ] || bin="$here/../target/release/apim-agent" ;;
  *) echo "usage: $0 controller|agent [--bin PATH]" >&2; exit 1 ;;
esac

[ -x "$bin" ] || { echo "no executable at $bin (build with cargo build --release)" >&2; exit 1; }
install -D -m 0755 "$bin" "$prefix/bin/$name"
install -D -m 0644 "$here/systemd/$unit" "$unitdir/$unit"
install -d -m 0755 "$confdir"

if [ "$role" = controller ]; then
  getent group apimctl >/dev/null || groupadd --system apimctl
  id -u apimctl >/dev/null 2>&1 || useradd --system --gid apimctl --home-dir /var/lib/apimctl \
    --shell /usr/sbin/nologin apimctl
  install -d -m 0700 -o apimctl -g apimctl /var/lib/apimctl
  if [ ! -e "$confdir/controller.toml" ]; then
    umask 027
    cat > "$confdir/controller.toml" <<CONF
listen = "0.0.0.0:7443"
server_names = ["$(hostname -f 2>/dev/null || hostname)"]
data_dir = "/var/lib/apimctl"
CONF
  fi
else
  install -d -m 0755 /opt/wso2
  install -d -m 0700 /var/lib/apim-agent
  if [ ! -e "$confdir/agent.toml" ]; then
    [ -n "$controller" ] && [ -n "$machine" ] || {
      echo "first install of the agent needs --controller HOST:PORT[,HOST:PORT...] and --machine NAME" >&2; exit 1; }
    umask 077
    cat > "$confdir/agent.toml" <<CONF
controller = "$controller"
machine = "$machine"
state_dir = "/var/lib/apim-agent"
hosts_file = "/etc/hosts"
token_file = "$confdir/token"
CONF
  fi
fi

if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "installed; start with: systemctl enable --now $unit"
else
  echo "installed (no running systemd: start $prefix/bin/$name by hand)"
fi
