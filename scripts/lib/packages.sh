# Debian packages installed on first use, for the scripts beside this folder. Sourced, not run:
#
#     source scripts/lib/packages.sh
#     install_packages test.sh redis-server openssl
#
# install_packages NAME [PACKAGE...] installs the PACKAGEs with apt-get, as root or through
# sudo, and does nothing when none is given (a caller passes only what it found missing). NAME
# starts each message. All output goes to stderr, so the caller's stdout stays its own. Without
# root or sudo it prints what to install and exits the calling script with status 1.

install_packages() {
    local name=$1
    shift
    [ "$#" -gt 0 ] || return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "$name: $* missing and we are neither root nor have sudo;" >&2
            echo "install these Debian packages, then rerun." >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    echo "$name: installing $*" >&2
    "${sudo[@]}" apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}
