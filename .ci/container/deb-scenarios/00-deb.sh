# The Debian package on a machine with systemd, as the README's "As a Debian package" says:
# `dpkg -i` the .deb (SHMSRV_DEB), `systemctl enable --now shmsrv.target io_conn md@0 md@1`,
# it serves (dumb PING, http GET /, kv PING), an operator in the shmsrv group watches it with
# viewstats (a user outside the group cannot), `dpkg -r` stops the units and leaves the conffile
# and nothing in /dev/shm or /run/shmsrv, `dpkg --purge` removes the rest. Runs in a container of
# its own (`.ci/container/run --deb FILE`): the install.sh scenarios' set is not here.
source "$SHMSRV_LIB/lib.sh"
test -f "$SHMSRV_DEB"
# A fresh machine: nothing of shmsrv installed (the container is the host's root: fail loudly if
# the host itself has an install that would shadow the package's units).
for f in /usr/local/bin/io_conn /etc/systemd/system/io_conn.service /etc/shmsrv/shmsrv.toml; do
    if [[ -e $f ]]; then
        echo "$f exists before the install: not a fresh machine"
        exit 1
    fi
done
dpkg -i "$SHMSRV_DEB"
dpkg -s shmsrv | grep -cx 'Status: install ok installed' >/dev/null
for f in /usr/bin/io_conn /usr/bin/md /usr/bin/viewstats; do
    test -x "$f"
done
test "$(command -v viewstats)" = /usr/bin/viewstats
cmp "$CONF" config/shmsrv.toml
# postinst: the user and group (sysusers), daemon-reload (the units load from /usr/lib).
test "$(id -gn shmsrv)" = shmsrv
for u in io_conn.service md@0.service shmsrv.target; do
    test "$(prop "$u" LoadState)" = loaded
    # (/lib is /usr/lib on a merged-/usr Debian; systemd may name either.)
    fp=$(prop "$u" FragmentPath)
    [[ ${fp#/usr} == "/lib/systemd/system/${u/@[0-9]/@}" ]] || { echo "$u loads from $fp"; exit 1; }
    test "$(systemctl is-active "$u")" = inactive # the package starts nothing itself
done
prop io_conn.service ExecStart | grep -c 'path=/usr/bin/io_conn ' >/dev/null

# The README's command.
systemctl enable --now shmsrv.target io_conn md@0 md@1
for u in shmsrv.target io_conn md@0 md@1; do
    test "$(systemctl is-active "$u")" = active
done
for n in 0 1; do
    wait_until 20 "md@$n attached" md_attached "$n"
done
test "$(ps -o user= -p "$(main_pid io_conn)")" = shmsrv
test "$(readlink "/proc/$(main_pid io_conn)/exe")" = /usr/bin/io_conn
test "$(readlink "/proc/$(main_pid md@1)/exe")" = /usr/bin/md

# It serves: dumb, http, kv.
$CLIENT ping --port "$DUMB_PORT" --count 5
python3 - <<'PY'
import http.client
c = http.client.HTTPConnection("127.0.0.1", 8080, timeout=30)
for path, want in (("/", b"hello\n"), ("/whoami", b"127.0.0.1:")):
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200 and body.startswith(want), (path, r.status, body)
print("http: GET / and /whoami answered")
PY
$CLIENT say --port 6380 --send '*1\r\n$4\r\nPING\r\n' --expect '+PONG\r\n'
$CLIENT say --port 6380 --send '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nhi\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n' \
    --expect '+OK\r\n$2\r\nhi\r\n'

# viewstats as an operator would: a member of the shmsrv group reads the stats segment (0640);
# a user outside it cannot.
useradd --no-create-home --shell /usr/sbin/nologin --groups shmsrv shmsrv-ci-operator
out=$(runuser -u shmsrv-ci-operator -- viewstats --config "$CONF" -1)
grep -c 'io_conn pid [0-9]* running' <<<"$out" >/dev/null
grep -c '^io.connections_accepted ' <<<"$out" >/dev/null
echo "operator: $(head -n1 <<<"$out")"
if denied=$(runuser -u nobody -- viewstats --config "$CONF" -1 2>&1 >/dev/null); then
    echo "viewstats worked for nobody, who is not in the shmsrv group"
    exit 1
fi
grep -ci 'permission denied' <<<"$denied" >/dev/null || { echo "nobody: $denied"; exit 1; }
echo "nobody (not in the group): $(head -n1 <<<"$denied")"
userdel shmsrv-ci-operator

# dpkg -r: prerm stops every unit; the conffile stays, nothing is left in /dev/shm or the
# runtime dir.
dpkg -r shmsrv
for u in io_conn md@0 md@1 shmsrv.target; do
    st=$(systemctl is-active "$u" || true)
    [[ $st == inactive || $st == unknown ]] || { echo "$u is $st after dpkg -r"; exit 1; }
done
test ! -e /usr/bin/io_conn
test -f "$CONF"
left=$(find /dev/shm -maxdepth 1 -name 'shmsrv.*')
[[ -z $left ]] || { echo "left in /dev/shm: $left"; exit 1; }
[[ ! -d /run/shmsrv ]] || [[ -z $(ls -A /run/shmsrv) ]] || { echo "left: $(ls -A /run/shmsrv)"; exit 1; }

# dpkg --purge: the conffile and the package's record go too; systemd forgets the units.
dpkg --purge shmsrv
test ! -e "$CONF"
test ! -e /usr/lib/systemd/system/io_conn.service
if dpkg -s shmsrv >/dev/null 2>&1; then
    echo "dpkg still knows shmsrv after --purge"
    exit 1
fi
test "$(prop io_conn.service LoadState)" = not-found
echo "the .deb installed, served, was watched by an operator, stopped on remove and purged"
