#!/usr/bin/env bash
# haven's whole test suite: the README's second command, and what .ci/run runs.
#
# Installs what it needs on a fresh machine of this kind (tshark for the
# Wireshark interop tests, nftables and iproute2 for the namespace tests,
# strongSwan for the VPN lab, promtool for the alert rules, cargo-fuzz for
# the fuzz smoke run), then: rustfmt, clippy -D warnings, every test of the
# workspace, and a bounded fuzz run of every target.
#
# Environment:
#   FUZZ_SECONDS   seconds per fuzz target (default 5; 0 skips fuzzing)
#   HAVEN_SKIP_ROOT_TESTS=1   let namespace tests skip instead of failing
#                             when not run as root
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
step() { printf '\n==> [%4ss] %s\n' "$((SECONDS - t0))" "$*"; }

need_apt=()
command -v tshark >/dev/null || need_apt+=(tshark)
command -v nft >/dev/null || need_apt+=(nftables)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v curl >/dev/null || need_apt+=(curl)
command -v ping >/dev/null || need_apt+=(iputils-ping)
# strongSwan for the VPN lab (cluster-tests/src/vpn.rs): charon with the
# kernel-libipsec plugin (user-space ESP: this kernel has no ESP), swanctl.
[ -x /usr/lib/ipsec/charon ] || need_apt+=(strongswan-charon)
[ -x /usr/sbin/swanctl ] || need_apt+=(strongswan-swanctl)
[ -e /usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so ] || need_apt+=(libcharon-extra-plugins)
[ -e /usr/lib/ipsec/plugins/libstrongswan-openssl.so ] || need_apt+=(libstrongswan-standard-plugins)
if [ ${#need_apt[@]} -gt 0 ]; then
    step "installing ${need_apt[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: ${need_apt[*]} missing and not root; install them or run as root" >&2
        exit 1
    fi
    apt-get update -qq
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# promtool (Debian's prometheus package) checks and tests the alert rules.
# --no-install-recommends: no node-exporter; the package's postinst would
# start a server where no policy-rc.d forbids it, so stop it at once.
if ! command -v promtool >/dev/null; then
    step "installing promtool (prometheus)"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: promtool missing and not root; apt-get install -y --no-install-recommends prometheus" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    pkill -x prometheus 2>/dev/null || true
fi
FUZZ_SECONDS=${FUZZ_SECONDS:-5}
if [ "$FUZZ_SECONDS" != 0 ] && ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

step "cargo fmt --check"
cargo fmt --all -- --check

# clippy and the test build in one compile: clippy-driver is rustc plus
# the lints, so as the workspace wrapper of a normal build it both lints
# (-D warnings, as `cargo clippy --all-targets -- -D warnings` would) and
# produces the test binaries. `cargo clippy` alone would compile every
# dependency a second time in check mode, which was a third of the suite's
# 15-minute budget on 2 cores. The run below keeps the same wrapper, so
# nothing is rebuilt.
clippy_driver=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
step "clippy -D warnings and test build (--all-targets)"
# Build every test and binary first, with the suite's feature set; the
# tests that start daemons then use those binaries as they are
# (cluster-tests' workspace_binary) instead of rebuilding them mid-test.
cargo test --workspace --all-targets --locked --no-run
step "cargo test (run)"
HAVEN_PREBUILT_BINS=1 cargo test --workspace --all-targets --locked
step "doctests"
HAVEN_PREBUILT_BINS=1 cargo test --workspace --doc --locked
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS

if [ "$FUZZ_SECONDS" != 0 ]; then
    step "fuzz smoke run (${FUZZ_SECONDS}s per target)"
    scripts/fuzz.sh "$FUZZ_SECONDS"
fi

leftover=$(ip netns list 2>/dev/null | grep -c '^hv-' || true)
if [ "$leftover" != 0 ]; then
    echo "error: the tests left $leftover network namespaces behind" >&2
    ip netns list >&2
    exit 1
fi
step "all green"
