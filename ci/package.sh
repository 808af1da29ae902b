#!/usr/bin/env bash
# Package checks, run by .ci/run as root on Debian: build the .deb (and its
# -dbgsym .ddeb with the debug symbols) with
# cargo-deb, install it with dpkg, check every file with its owner and
# mode, check the installed unit with systemd-analyze, run `mcprom check` on
# the installed config, purge, and check that nothing is left.
#
# Exits non-zero on the first failure. The machine is changed: the package
# is purged at the end (with the mcprom user). The .deb stays in
# target/debian/ for testbed/systemd-e2e, which .ci/run runs next.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n=== package: %s ===\n' "$*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    fail "needs root (dpkg -i, users, /var/lib)"
fi

section "tools"
export DEBIAN_FRONTEND=noninteractive
# systemd: systemd-analyze, systemd-sysusers, systemd-tmpfiles.
# dpkg-dev: dpkg-shlibdeps, which cargo-deb uses for the $auto dependencies.
# prometheus: its group receives the token directory (the normal setup).
missing=()
for pkg in systemd dpkg-dev prometheus; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo-deb >/dev/null; then
    # From crates.io; a few minutes on two cores.
    cargo install --locked cargo-deb
fi

section "systemd-analyze on the source unit"
# The exposure score does not depend on the binary being installed.
security=$(systemd-analyze security --offline=true --threshold=15 systemd/mcprom.service) ||
    fail "systemd-analyze security: exposure above 1.5: $(tail -n1 <<<"$security")"
tail -n1 <<<"$security"

section "build"
# A leftover install (an aborted earlier run) would hide install problems.
for pkg in mcprom-dbgsym mcprom; do
    if dpkg-query -W "$pkg" >/dev/null 2>&1; then
        dpkg --purge "$pkg"
    fi
done
target_dir=${CARGO_TARGET_DIR:-target}
rm -f "$target_dir"/debian/mcprom_*.deb "$target_dir"/debian/mcprom-dbgsym_*.ddeb
cargo deb --locked
deb=$(ls "$target_dir"/debian/mcprom_*.deb)
[ "$(wc -l <<<"$deb")" = 1 ] || fail "expected one .deb, got: $deb"
# The debug symbols, in a package of their own (Debian's -dbgsym convention).
ddeb=$(ls "$target_dir"/debian/mcprom-dbgsym_*.ddeb)
[ "$(wc -l <<<"$ddeb")" = 1 ] || fail "expected one -dbgsym .ddeb, got: $ddeb"
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"
dpkg-deb --info "$ddeb"
dpkg-deb --contents "$ddeb"

section "contents"
# Exactly these files, owned by root (0/0), with these modes; mcprom-sim and
# the debug symbols are not in it.
expected="./etc/default/mcprom -rw-r--r-- 0/0
./etc/mcprom.d/README -rw-r--r-- 0/0
./etc/mcprom.toml -rw-r--r-- 0/0
./usr/bin/mcprom -rwxr-xr-x 0/0
./usr/lib/systemd/system/mcprom.service -rw-r--r-- 0/0
./usr/lib/sysusers.d/mcprom.conf -rw-r--r-- 0/0
./usr/lib/tmpfiles.d/mcprom.conf -rw-r--r-- 0/0
./usr/share/doc/mcprom/copyright -rw-r--r-- 0/0
./usr/share/doc/mcprom/examples/paths.conf.example -rw-r--r-- 0/0
./usr/share/doc/mcprom/install.md -rw-r--r-- 0/0"
actual=$(dpkg-deb --contents "$deb" | awk '$1 !~ /^d/ { print $6, $1, $2 }' |
    sed -E 's|/\.build-id/[0-9a-f]{2}/[0-9a-f]{38}\.debug |/.build-id/BUILD-ID.debug |' |
    LC_ALL=C sort)
if [ "$actual" != "$expected" ]; then
    diff <(echo "$expected") <(echo "$actual") || true
    fail "package contents differ (expected left, actual right)"
fi
maintainer=$(dpkg-deb --field "$deb" Maintainer)
[ "$maintainer" = "mcprom maintainers <mcprom-maintainers@lists.mcprom.dev>" ] ||
    fail "Maintainer: $maintainer"
# The -dbgsym package: only the binary's line tables, at its build id (BUILD-ID
# stands for it), where backtraces and debuggers look for them.
expected_dbgsym="./usr/lib/debug/.build-id/BUILD-ID.debug -rw-r--r-- 0/0"
actual_dbgsym=$(dpkg-deb --contents "$ddeb" | awk '$1 !~ /^d/ { print $6, $1, $2 }' |
    sed -E 's|/\.build-id/[0-9a-f]{2}/[0-9a-f]{38}\.debug |/.build-id/BUILD-ID.debug |' |
    LC_ALL=C sort)
if [ "$actual_dbgsym" != "$expected_dbgsym" ]; then
    diff <(echo "$expected_dbgsym") <(echo "$actual_dbgsym") || true
    fail "dbgsym package contents differ (expected left, actual right)"
fi
[ "$(dpkg-deb --field "$ddeb" Package)" = mcprom-dbgsym ] ||
    fail "dbgsym package name: $(dpkg-deb --field "$ddeb" Package)"
[ "$(dpkg-deb --field "$ddeb" Version)" = "$(dpkg-deb --field "$deb" Version)" ] ||
    fail "dbgsym version $(dpkg-deb --field "$ddeb" Version) is not the package's"
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | sort)
[ "$conffiles" = "$(printf '/etc/default/mcprom\n/etc/mcprom.d/README\n/etc/mcprom.toml')" ] ||
    fail "conffiles: $conffiles"

section "install"
dpkg -i "$deb"
dpkg-query -W -f='${Status}\n' mcprom | grep -qx 'install ok installed' ||
    fail "mcprom is not fully installed"

# path, mode, owner:group, as stat prints them.
check_stat() {
    local path=$1 want=$2 got
    got=$(stat -c '%a %U:%G' "$path") || fail "$path is missing"
    [ "$got" = "$want" ] || fail "$path: got $got, want $want"
    echo "ok: $path $got"
}
check_stat /usr/bin/mcprom "755 root:root"
check_stat /etc/mcprom.toml "644 root:root"
check_stat /etc/default/mcprom "644 root:root"
# The drop-in directory: shipped, holding no drop-in (only its README).
check_stat /etc/mcprom.d "755 root:root"
[ -z "$(find /etc/mcprom.d -name '*.toml')" ] || fail "/etc/mcprom.d ships a drop-in"
check_stat /usr/lib/systemd/system/mcprom.service "644 root:root"
check_stat /usr/lib/sysusers.d/mcprom.conf "644 root:root"
check_stat /usr/lib/tmpfiles.d/mcprom.conf "644 root:root"
check_stat /var/lib/mcprom "751 mcprom:mcprom"
# setgid prometheus: token files created here are readable by Prometheus.
check_stat /var/lib/mcprom/tokens "2750 mcprom:prometheus"
[ ! -e /usr/bin/mcprom-sim ] || fail "mcprom-sim must not be installed"

getent passwd mcprom | grep -q ':/var/lib/mcprom:/usr/sbin/nologin$' ||
    fail "mcprom user: $(getent passwd mcprom)"
id -Gn mcprom | tr ' ' '\n' | grep -qx prometheus ||
    fail "mcprom is not in the prometheus group: $(id -Gn mcprom)"
echo "ok: user $(id mcprom)"

# Enabled the Debian way, even where systemd is not running (CI).
[ -L /etc/systemd/system/multi-user.target.wants/mcprom.service ] ||
    fail "mcprom.service is not enabled"
echo "ok: enabled"

# Reinstalling (as an upgrade does) must be clean and keep the directory's
# group.
dpkg -i "$deb"
check_stat /var/lib/mcprom/tokens "2750 mcprom:prometheus"

section "install the -dbgsym package"
dpkg -i "$ddeb"
dpkg-query -W -f='${Status}\n' mcprom-dbgsym | grep -qx 'install ok installed' ||
    fail "mcprom-dbgsym is not fully installed"
# The debug file is the one for the installed binary: named after its build id.
build_id=$(readelf -n /usr/bin/mcprom | awk '/Build ID:/ { print $3 }')
[ -n "$build_id" ] || fail "/usr/bin/mcprom has no build id"
check_stat "/usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug" "644 root:root"
echo "installed size: mcprom $(dpkg-query -W -f='${Installed-Size}' mcprom) KiB," \
    "mcprom-dbgsym $(dpkg-query -W -f='${Installed-Size}' mcprom-dbgsym) KiB"

section "systemd-analyze on the installed unit"
# verify needs the binary at the ExecStart= path, hence after dpkg -i. Any
# output is a finding.
verify=$(systemd-analyze verify /usr/lib/systemd/system/mcprom.service 2>&1) ||
    fail "systemd-analyze verify failed: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify printed: $verify"
echo "ok: verify printed nothing"
systemd-analyze security --offline=true --threshold=15 mcprom.service | tail -n1 ||
    fail "systemd-analyze security on the installed unit"

section "mcprom check on the installed config"
# As the service user, the way the daemon would read it.
setpriv --reuid=mcprom --regid=mcprom --init-groups \
    /usr/bin/mcprom check --config /etc/mcprom.toml
# A drop-in in the shipped directory is read, as the service user too.
printf 'abc.def.ghi\n' >/etc/mcprom.d/check.token
printf '[[cluster]]\nname = "dropin-check"\napi_server = "https://127.0.0.1:6443"\nservice_account = "kube-system/prometheus"\n[cluster.credentials]\ntoken_file = "check.token"\n' \
    >/etc/mcprom.d/check.toml
out=$(setpriv --reuid=mcprom --regid=mcprom --init-groups \
    /usr/bin/mcprom check --config /etc/mcprom.toml) || fail "mcprom check with a drop-in: $out"
[ "$out" = "/etc/mcprom.toml + 1 file in /etc/mcprom.d: OK (1 cluster)" ] ||
    fail "mcprom check with a drop-in printed: $out"
echo "ok: $out"
rm /etc/mcprom.d/check.toml /etc/mcprom.d/check.token
/usr/bin/mcprom --version

section "purge"
dpkg --purge mcprom-dbgsym mcprom
! dpkg-query -W -f='${Status}\n' mcprom-dbgsym 2>/dev/null | grep -q installed ||
    fail "still installed: $(dpkg-query -W -f='${Status}' mcprom-dbgsym)"
! dpkg-query -W -f='${Status}\n' mcprom 2>/dev/null | grep -q installed ||
    fail "still installed: $(dpkg-query -W -f='${Status}' mcprom)"
for path in /usr/bin/mcprom /etc/mcprom.toml /etc/mcprom.d /etc/default/mcprom \
    /usr/lib/systemd/system/mcprom.service /usr/lib/sysusers.d/mcprom.conf \
    /usr/lib/tmpfiles.d/mcprom.conf /usr/share/doc/mcprom /var/lib/mcprom \
    /etc/systemd/system/multi-user.target.wants/mcprom.service /usr/lib/debug/.build-id/"${build_id:0:2}"/"${build_id:2}".debug; do
    [ ! -e "$path" ] && [ ! -L "$path" ] || fail "left after purge: $path"
done
! getent passwd mcprom >/dev/null || fail "left after purge: user $(getent passwd mcprom)"
! getent group mcprom >/dev/null || fail "left after purge: group $(getent group mcprom)"
echo "ok: nothing left"

section "done"
echo "package checks passed"
