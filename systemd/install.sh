#!/usr/bin/env bash
# Installs (or removes) agentmesh: the `agentmesh` user, directories, binaries, example configs
# and systemd units. Idempotent: running it again changes nothing that is already right, and
# never overwrites a config that exists.
#
#   systemd/install.sh [install] [--prefix DIR] [--bin-dir DIR] [--dry-run]
#   systemd/install.sh uninstall [--purge] [--prefix DIR] [--dry-run]
#
# --prefix DIR  put everything under DIR (a staging tree or a test); no user is created, no
#               owner is changed and systemctl is not run: what would be done is printed.
# --bin-dir DIR where the built binaries are (default: target/release beside this script's
#               repository).
# --dry-run     print every step, change nothing.
# uninstall     removes binaries and units, keeps configs and state; --purge removes those
#               too (and the user).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
action=install
prefix=""
bin_dir="$repo/target/release"
dry=0
purge=0

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 64
}

while [ $# -gt 0 ]; do
  case "$1" in
    install | uninstall) action="$1" ;;
    --prefix) prefix="${2:?--prefix needs a directory}"; shift ;;
    --prefix=*) prefix="${1#--prefix=}" ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift ;;
    --bin-dir=*) bin_dir="${1#--bin-dir=}" ;;
    --dry-run) dry=1 ;;
    --purge) purge=1 ;;
    -h | --help) usage ;;
    *) echo "install.sh: unknown argument $1" >&2; usage ;;
  esac
  shift
done

if [ -n "$prefix" ]; then
  case "$prefix" in /*) ;; *) prefix="$(pwd)/$prefix" ;; esac
  prefix="${prefix%/}"
fi

user=agentmesh
bin="$prefix/usr/local/bin"
etc="$prefix/etc/agentmesh"
units="$prefix/etc/systemd/system"
share="$prefix/usr/local/share/agentmesh"
backend_state="$prefix/var/lib/agentmesh-backend"
gateway_state="$prefix/var/lib/agentmesh-gateway"

if [ -z "$prefix" ] && [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (or use --prefix DIR or --dry-run)" >&2
  exit 77
fi

# Runs a command, or prints it under --dry-run.
run() {
  if [ "$dry" = 1 ]; then
    echo "would: $*"
  else
    echo "+ $*"
    "$@"
  fi
}

# System-wide steps (users, owners, systemctl): only without --prefix.
system() {
  if [ -n "$prefix" ]; then
    echo "skip (--prefix): $*"
  else
    run "$@"
  fi
}

# A standard parent directory (/etc, /usr/local/bin, ...): created when missing, never
# re-moded or re-owned.
parent() {
  if [ ! -d "$1" ]; then
    run install -d -m 0755 "$1"
  fi
}

# mkdir with a mode (and owner when installing for real), only when missing or different.
dir() { # path mode owner
  if [ ! -d "$1" ]; then
    run install -d -m "$2" "$1"
  elif [ "$(stat -c %a "$1")" != "${2#0}" ]; then
    run chmod "$2" "$1"
  fi
  system chown "$3" "$1"
}

# Copies a file when missing or different (mode set either way).
file() { # src dst mode
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    if [ "$(stat -c %a "$2")" != "${3#0}" ]; then
      run chmod "$3" "$2"
    fi
    echo "unchanged: $2"
  else
    run install -m "$3" "$1" "$2"
  fi
}

# Copies a config only when none exists: an operator's edits are never overwritten.
config() { # src dst
  if [ -e "$2" ]; then
    echo "kept: $2 (exists)"
  else
    run install -m 0640 "$1" "$2"
    system chown "root:$user" "$2"
  fi
}

remove() {
  if [ -e "$1" ] || [ -L "$1" ]; then
    run rm -rf "$1"
  fi
}

do_install() {
  for b in backend-agent gateway-agent; do
    if [ ! -x "$bin_dir/$b" ]; then
      echo "install.sh: $bin_dir/$b missing: cargo build --release (or --bin-dir DIR)" >&2
      exit 66
    fi
  done
  if [ -z "$prefix" ] && ! id -u "$user" >/dev/null 2>&1; then
    system useradd --system --no-create-home --home-dir /var/lib/agentmesh-backend \
      --shell /usr/sbin/nologin "$user"
  elif [ -n "$prefix" ]; then
    echo "skip (--prefix): useradd --system $user"
  else
    echo "unchanged: user $user"
  fi
  parent "$bin"
  parent "$units"
  parent "$prefix/var/lib"
  dir "$etc" 0750 "root:$user"
  dir "$etc/tls" 0750 "root:$user"
  dir "$units/gateway-agent.service.d" 0755 root:root
  dir "$share" 0755 root:root
  dir "$backend_state" 0700 "$user:$user"
  dir "$gateway_state" 0700 root:root
  file "$bin_dir/backend-agent" "$bin/backend-agent" 0755
  file "$bin_dir/gateway-agent" "$bin/gateway-agent" 0755
  file "$here/backend-agent.service" "$units/backend-agent.service" 0644
  file "$here/gateway-agent.service" "$units/gateway-agent.service" 0644
  file "$here/gateway-agent.service.d/widen-system-verbs.conf.example" \
    "$share/widen-system-verbs.conf.example" 0644
  file "$repo/backend-agent/examples/backend.toml" "$share/backend.toml.example" 0644
  file "$repo/gateway-agent/examples/gateway.toml" "$share/gateway.toml.example" 0644
  config "$repo/backend-agent/examples/backend.toml" "$etc/backend.toml"
  config "$repo/gateway-agent/examples/gateway.toml" "$etc/gateway.toml"
  system systemctl daemon-reload
  echo "done. Next: put certificates in $etc/tls, edit $etc/*.toml, then"
  echo "  systemctl enable --now backend-agent   # control plane host"
  echo "  systemctl enable --now gateway-agent   # each managed host"
}

do_uninstall() {
  for u in backend-agent gateway-agent; do
    if [ -e "$units/$u.service" ]; then
      system systemctl disable --now "$u.service"
    fi
    remove "$units/$u.service"
    remove "$bin/$u"
  done
  remove "$share"
  system systemctl daemon-reload
  if [ "$purge" = 1 ]; then
    remove "$units/gateway-agent.service.d"
    remove "$etc"
    remove "$backend_state"
    remove "$gateway_state"
    if [ -n "$prefix" ] || id -u "$user" >/dev/null 2>&1; then
      system userdel "$user"
    fi
  else
    echo "kept: $etc, $backend_state, $gateway_state (uninstall --purge removes them)"
  fi
}

case "$action" in
  install) do_install ;;
  uninstall) do_uninstall ;;
esac
