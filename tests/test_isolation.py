"""Only the owner's processes can reach a local cluster (real processes, a real second user).

The tests run as root (as CI does); a second user (``nobody``, through ``runuser``) scans for every
socket the owner's clusters listen on while they start and stop, again and again, and tries to open
a session with each as a driver (Head.Session) and as a node's head (Node.Work). Reaching either
would let it run code as the owner. Inside a fresh network namespace (``unshare -n``) every TCP
listener it sees is one of ours, so it probes those too.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECOND_USER = "nobody"

SCANNER = r'''
import json, os, socket, sys, time
import grpc
sys.path.insert(0, ROOT)
from starburst._proto import starburst_pb2 as pb
from starburst._proto import starburst_pb2_grpc as pb_grpc

breaches, seen, stats = [], set(), {"rounds": 0, "unix": 0, "tcp": 0, "denied": 0}

def unix_paths():
    out = []
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and "starburst" in parts[7] and not parts[7].startswith("@"):
                out.append(parts[7])
    return out

def tcp_ports():
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":  # LISTEN
                        out.append(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return out

def try_grpc(target):
    """Open a driver session and a node stream; a welcome or a hello means we got in."""
    md = (("starburst-token", "guess"),)
    with grpc.insecure_channel(target) as ch:
        try:
            call = pb_grpc.HeadStub(ch).Session(
                iter([pb.ClientMsg(ops=[pb.ClientOp(hello=pb.Hello(kind="driver", pid=os.getpid()))])]),
                timeout=2, metadata=md)
            for msg in call:
                if any(op.WhichOneof("op") == "welcome" for op in msg.ops):
                    breaches.append(f"Head.Session welcomed us at {target}")
                break
        except grpc.RpcError:
            stats["denied"] += 1
        try:
            call = pb_grpc.NodeStub(ch).Work(iter([]), timeout=2, metadata=md)
            for msg in call:
                if any(op.WhichOneof("op") == "hello" for op in msg.ops):
                    breaches.append(f"Node.Work accepted us as its head at {target}")
                break
        except grpc.RpcError:
            stats["denied"] += 1

def try_http(port):
    """The dashboard's routes with a guessed token (and none): any answer but 403 means we got in."""
    import urllib.error, urllib.request
    for path in ("/", "/api/state", "/api/timeline", "/static/dashboard.js", "/?token=guess"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                breaches.append(f"HTTP {r.status} for {path} on port {port}")
        except urllib.error.HTTPError as e:
            if e.code == 403:
                stats["denied"] += 1
            else:
                breaches.append(f"HTTP {e.code} (not 403) for {path} on port {port}")
        except (OSError, ValueError):
            stats["denied"] += 1  # not HTTP (or gone): nothing answered

deadline = time.monotonic() + float(sys.argv[2])
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    stats["rounds"] += 1
    for path in unix_paths():
        stats["unix"] += 1
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
        except OSError:
            stats["denied"] += 1
            continue
        finally:
            s.close()
        breaches.append(f"connected to {path}")
        try_grpc("unix:" + path)
    if NETNS:
        for port in tcp_ports():
            stats["tcp"] += 1
            try_grpc(f"127.0.0.1:{port}")
            try_http(port)
    for d in DIRS:
        try:
            names = os.listdir(d)
            if names:  # (the test made STARBURST_HOME 0755; once starburst writes in it, it must be private)
                breaches.append(f"listed {d}: {names[:5]}")
        except OSError:
            pass
print(json.dumps({"breaches": sorted(set(breaches)), "stats": stats}))
'''

DRIVER = r'''
import os, sys, json, psutil
import starburst
starburst.init(num_cpus=1)
assert starburst.get(starburst.remote(lambda: 7).remote()) == 7

@starburst.remote
class Echo:  # its process listens for this driver's calls (an actor socket to scan too)
    def echo(self, x):
        return x

echo = Echo.remote()
assert starburst.get([echo.echo.remote(i) for i in range(20)]) == list(range(20))
head = [p for p in psutil.Process().children() if "starburst.head" in " ".join(p.cmdline())][0]
pids = [head.pid] + [c.pid for c in head.children(recursive=True)]
listening = []
for pid in pids:
    try:
        for c in psutil.Process(pid).net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                listening.append([pid, c.laddr.ip, c.laddr.port])
    except psutil.Error:
        pass
store = starburst._runtime.peek_client().store.directory
dashboard = starburst.api.dashboard_url()
print(json.dumps({"store": store, "store_mode": os.stat(store).st_mode & 0o777, "tcp_listeners": listening,
                  "dashboard": dashboard}), flush=True)
starburst.shutdown()
'''


def _second_user_python() -> list[str]:
    """An interpreter the second user can run, with this venv's packages; fails the test if none."""
    if shutil.which("runuser") is None:
        pytest.fail("runuser is not available: this test must run a second local user (it runs as root in CI)")
    site = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)]
    candidates = [[sys.executable]]
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}",):
        for d in ("/usr/bin", "/usr/local/bin"):
            if os.path.exists(os.path.join(d, name)):
                candidates.append([os.path.join(d, name)])
    tried = []
    for cmd in candidates:
        probe = subprocess.run(
            ["runuser", "-u", SECOND_USER, "--", *cmd, "-c", "import grpc, google.protobuf"],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(site)),
        )
        if probe.returncode == 0:
            return cmd
        tried.append(f"{cmd[0]}: {probe.stderr.strip()[-200:]}")
    pytest.fail(f"the second user {SECOND_USER!r} can run no Python with grpc installed ({'; '.join(tried)}); "
                "make the venv's interpreter readable and executable by others (o+rx on its path)")


def _netns_available() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_second_user_cannot_reach_the_cluster_at_any_moment_of_its_start(tmp_path):
    if os.getuid() != 0:
        pytest.fail("this test runs as root (as in CI) so that it can act as a second user through runuser")
    python = _second_user_python()
    work = pathlib.Path(tempfile.mkdtemp(prefix="sb-iso-"))
    try:
        work.chmod(0o755)
        home = work / "home"
        home.mkdir(mode=0o755)  # the cluster must tighten it to owner-only
        home.chmod(0o755)
        stop = work / "stop"
        scanner = work / "scanner.py"
        runtime = pathlib.Path(f"/tmp/starburst-{os.getuid()}")
        netns = _netns_available()
        scanner.write_text(
            f"ROOT = {str(ROOT)!r}\nNETNS = {netns!r}\nDIRS = [{str(home)!r}, {str(runtime)!r}]\n" + SCANNER)
        scanner.chmod(0o644)
        (work / "driver.py").write_text(DRIVER)
        site = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)]
        orchestrator = work / "orchestrate.py"
        orchestrator.write_text(textwrap.dedent(f"""
            import json, os, subprocess, sys
            env = dict(os.environ, STARBURST_HOME={str(home)!r}, PYTHONPATH={str(ROOT)!r})
            scan_env = dict(os.environ, PYTHONPATH={os.pathsep.join(site)!r}, HOME="/tmp")
            scan = subprocess.Popen(["runuser", "-u", {SECOND_USER!r}, "--", *{python!r}, {str(scanner)!r},
                                     {str(stop)!r}, "300"], stdout=subprocess.PIPE, text=True, env=scan_env,
                                    cwd="/tmp")
            rounds = []
            try:
                for i in range(5):
                    out = subprocess.run([sys.executable, {str(work / 'driver.py')!r}], capture_output=True,
                                         text=True, env=env, timeout=120)
                    if out.returncode != 0:
                        raise SystemExit("driver failed: " + out.stderr[-2000:])
                    rounds.append(json.loads(out.stdout.strip().splitlines()[-1]))
            finally:
                open({str(stop)!r}, "w").close()
                report = json.loads(scan.communicate(timeout=60)[0])
            print(json.dumps({{"rounds": rounds, "scan": report}}))
        """))
        cmd = [sys.executable, str(orchestrator)]
        if netns:
            cmd = ["unshare", "-n", "sh", "-c", f"ip link set lo up 2>/dev/null; exec {sys.executable} {orchestrator}"]
        env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "STARBURST_RUNTIME_DIR")}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        scan = result["scan"]
        assert scan["stats"]["rounds"] > 5, scan  # it really was scanning while the clusters started
        assert scan["stats"]["unix"] > 0, scan  # and it found their sockets (and was refused)
        assert scan["breaches"] == [], scan["breaches"]
        if netns:
            assert scan["stats"]["tcp"] > 0, scan  # the dashboard's port was found and probed
        for info in result["rounds"]:
            # The only TCP listener is the dashboard's (a browser can't use a Unix socket), on 127.0.0.1
            # and behind its token, which the scanner above tried to get past.
            port = int(info["dashboard"].split(":")[2].split("/")[0]) if info["dashboard"] else None
            others = [x for x in info["tcp_listeners"] if not (x[1] == "127.0.0.1" and x[2] == port)]
            assert others == [], f"the local cluster listens on TCP: {others} (dashboard: {info['dashboard']})"
            assert info["store_mode"] & 0o077 == 0, f"the store {info['store']} is {oct(info['store_mode'])}"
        # Owner-only files: STARBURST_HOME was made private, and everything under it is.
        for path in [home, *home.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_runtime_directory_owned_by_someone_else_is_refused(tmp_path):
    """Another user who creates our runtime directory first (to catch our sockets) is refused."""
    if os.getuid() != 0:
        pytest.fail("this test runs as root (as in CI) so that it can make a directory owned by another user")
    import pwd

    victim = pathlib.Path(tempfile.mkdtemp(prefix="sb-run-", dir="/tmp"))  # short whatever TMPDIR is
    victim.chmod(0o777)
    os.chown(victim, pwd.getpwnam(SECOND_USER).pw_uid, -1)
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-c", "import starburst; starburst.init(num_cpus=1)"], capture_output=True, text=True,
        timeout=60, env=dict(os.environ, STARBURST_HOME=str(home), STARBURST_RUNTIME_DIR=str(victim),
                             PYTHONPATH=str(ROOT)))
    assert proc.returncode != 0
    assert "belongs to uid" in proc.stderr and "not to you" in proc.stderr, proc.stderr[-2000:]
    assert list(victim.iterdir()) == []
    shutil.rmtree(victim)


@pytest.mark.slow
def test_head_over_tcp_needs_its_token(tmp_path):
    """``starburst up --listen`` accepts drivers over TCP only with the token it prints."""
    home = tmp_path / "home"
    env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))
    up = subprocess.run([sys.executable, "-m", "starburst", "up", "--num-cpus", "1", "--listen", "127.0.0.1:0"],
                        capture_output=True, text=True, timeout=120, env=env)
    assert up.returncode == 0, up.stderr
    try:
        listen = json.loads((home / "head.json").read_text())["listen"]
        token, _, hostport = listen.partition("@")
        assert token and hostport.startswith("127.0.0.1:"), listen
        script = ("import starburst, sys\nstarburst.init(address=sys.argv[1])\n"
                  "print(starburst.get(starburst.remote(lambda: 41 + 1).remote()))\nstarburst.shutdown()\n")
        other = str(tmp_path / "elsewhere")  # a driver that can't read our STARBURST_HOME
        good = subprocess.run([sys.executable, "-c", script, listen], capture_output=True, text=True, timeout=60,
                              env=dict(env, STARBURST_HOME=other))
        assert good.returncode == 0 and good.stdout.strip() == "42", good.stderr[-2000:]
        bad = subprocess.run([sys.executable, "-c", script, "wrong@" + hostport], capture_output=True, text=True,
                             timeout=60, env=dict(env, STARBURST_HOME=other))
        assert bad.returncode != 0 and "UNAUTHENTICATED" in bad.stderr, bad.stderr[-2000:]
        none = subprocess.run([sys.executable, "-c", script, hostport], capture_output=True, text=True, timeout=60,
                              env=dict(env, STARBURST_HOME=other))
        assert none.returncode != 0 and "needs its token" in none.stderr, none.stderr[-2000:]
    finally:
        subprocess.run([sys.executable, "-m", "starburst", "down"], capture_output=True, timeout=60, env=env)
