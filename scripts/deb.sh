#!/usr/bin/env bash
# Build tollgate's Debian package and check it on this machine: install it with dpkg, validate
# the packaged /etc/tollgate/tollgate.yaml with the packaged binary, and `systemd-analyze
# verify` the packaged unit. CI runs it after the tests (.ci/run); `make deb` too.
#   cargo-deb is installed (pinned) when missing; the binary is built with [profile.deb]
#   (release without fat LTO), then packaged with `cargo deb --no-build`. DEB_PROFILE=dev
#   packages the debug binary the tests already built instead (CI: the package's layout,
#   conffile and unit are what is checked, and a second build would double CI's time).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
command -v cargo-deb >/dev/null || cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked

profile=${DEB_PROFILE:-deb}
start=$(date +%s)
[[ $profile == dev ]] || cargo build --profile "$profile" --locked
cargo deb --no-build --profile "$profile"
deb=$(ls -t target/debian/tollgate_*.deb | head -n1)
echo "package: $deb, $(stat -c %s "$deb") bytes (built in $(($(date +%s) - start)) s)"

sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
$sudo dpkg -i "$deb"
/usr/bin/tollgate -t -c /etc/tollgate/tollgate.yaml
if command -v systemd-analyze >/dev/null; then
  # Prints nothing and exits 0 when the unit is fine.
  unit=$(dpkg -L tollgate | grep '/systemd/system/tollgate\.service$')
  systemd-analyze verify "$unit"
  echo "systemd-analyze verify $unit: ok"
else
  echo "systemd-analyze not installed: unit not verified" >&2
fi
