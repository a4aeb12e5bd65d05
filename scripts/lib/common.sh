# shellcheck shell=bash
# Helpers shared by the scripts in scripts/ and .ci/run (sourced, never run on its own):
# progress output, the repository root, root/sudo handling, URL parsing and the cargo check.
# The variables set here (DEFAULT_*, URL_*) are read by the scripts that source this file.
# shellcheck disable=SC2034

WARDEN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export WARDEN_ROOT

DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/warden"
DEFAULT_REDIS_URL="redis://127.0.0.1:6379"

log() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command as root: directly when we are root, else through sudo. Without a terminal on
# stdin (CI) sudo must not wait for a password, so it runs with -n and fails at once instead.
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [ -t 0 ]; then sudo -- "$@"; else sudo -n -- "$@"; fi
    else
        die "root is needed for: $* (run as root, or install and configure sudo)"
    fi
}

# Run a command as another (system) user, e.g. `as_user redis redis-server ...`.
as_user() {
    local user=$1
    shift
    if is_root; then
        runuser -u "$user" -- "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [ -t 0 ]; then sudo -u "$user" -- "$@"; else sudo -n -u "$user" -- "$@"; fi
    else
        die "sudo is needed to run as $user: $*"
    fi
}

# Hide the password of a URL before printing it.
redact_url() { printf '%s\n' "$1" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#'; }

# parse_url URL DEFAULT_PORT: sets URL_USER, URL_HOST (without [ ]), URL_PORT, URL_PATH
# (the part after the first / of the path, without query string).
parse_url() {
    local url=$1 default_port=$2
    local re='^[A-Za-z][A-Za-z0-9+.-]*://(([^@/]*)@)?(\[[^]/]*\]|[^:/?]*)(:([0-9]+))?(/([^?]*))?'
    if [[ $url =~ $re ]]; then
        URL_USER="${BASH_REMATCH[2]%%:*}"
        URL_HOST="${BASH_REMATCH[3]#[}"
        URL_HOST="${URL_HOST%]}"
        URL_PORT="${BASH_REMATCH[5]:-$default_port}"
        URL_PATH="${BASH_REMATCH[7]}"
    else
        die "cannot parse URL: $(redact_url "$url")"
    fi
}

# True for the hosts scripts/services installs, starts and configures itself.
is_local_host() {
    case $1 in
        127.0.0.1 | localhost | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

# Make cargo reachable: rustup puts it in ~/.cargo/bin, which a non-login shell may not have.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck source=/dev/null
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs), then open a new shell"
}

# Where cargo puts its output: $CARGO_TARGET_DIR (relative to the workspace) or target/.
target_dir() {
    local dir="${CARGO_TARGET_DIR:-target}"
    case $dir in
        /*) printf '%s\n' "$dir" ;;
        *) printf '%s\n' "$WARDEN_ROOT/$dir" ;;
    esac
}
