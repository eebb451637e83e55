"""A three-node RabbitMQ cluster on this machine, for the cluster test tier and benchmarks.

``RabbitCluster`` runs the installed ``rabbitmq-server`` (Debian's 3.10) once per node, as the
``rabbitmq`` user, each node with its own name (``plinth<run>n<i>@localhost``), AMQP port,
distribution port, optional management port, and its own data, log and config directories
under ``var/cluster/<run>/``. The nodes share an Erlang cookie of their own (not the system
node's, so no command given here can reach the system node on 5672/25672/15672 by mistake).
Nodes 2 and 3 join node 1 with ``join_cluster``; ``start()`` returns once all three report
the same three running nodes.

Every node is a child process of this one (``rabbitmq-server`` in the foreground, which execs
the Erlang VM), so ``stop_node``/``kill_node``/``pause_node`` act on a pid this fixture owns,
and ``stop()`` always ends what was started and removes the directory. Every wait has a
deadline (``ClusterError`` when it passes)::

    with RabbitCluster() as cluster:
        uri = cluster.amqp_uri("/")            # "amqp://guest:guest@127.0.0.1:p1//;..."
        cluster.add_vhost("v")
        leader = cluster.queue_leader("v", "rpc-identity")   # index of the leading node
        cluster.stop_node(leader); cluster.start_node(leader)
        with cluster.paused(2): ...

Node indexes are 0, 1, 2 throughout.
"""

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = ROOT / "var" / "cluster"
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
RUN_AS = "rabbitmq"
SYSTEM_PORTS = {5672, 25672, 15672, 4369}
USER, PASSWORD = "guest", "guest"
# a node's runuser gets SIGTERM when this process dies, and passes it on to the node, so a
# killed test run leaves no node behind (the same launcher as tests/support/platform.py)
LAUNCHER = ("import ctypes, os, signal, sys; "
            "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM); "
            "os.execv(sys.argv[1], sys.argv[1:])")


class ClusterError(RuntimeError):
    pass


def available():
    """Why a cluster cannot be run here, or None when it can."""
    if not Path(SERVER).exists():
        return "rabbitmq-server is not installed"
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return f"no {RUN_AS} user"
    if os.geteuid() != 0:
        return "starting RabbitMQ nodes as the rabbitmq user needs root"
    return None


def _free_port(taken):
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # the distribution port must not collide with another node's AMQP port + 20000 etc.
        if port not in taken and port not in SYSTEM_PORTS and port < 45000:
            taken.add(port)
            return port


class Node:
    """One node: its ports, directories and (while running) its process."""

    def __init__(self, cluster, index, ports):
        self.cluster, self.index = cluster, index
        self.name = f"plinth{cluster.run_id}n{index + 1}@localhost"
        self.port, self.dist_port, self.management_port = ports
        self.dir = cluster.base / f"n{index + 1}"
        self.popen = None
        self.paused = False

    @property
    def running(self):
        return self.popen is not None and self.popen.poll() is None

    @property
    def log_path(self):
        return self.dir / "stdout.log"

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update({
            "HOME": str(self.cluster.base),  # its .erlang.cookie is this cluster's own
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
            "RABBITMQ_LOGS": str(self.dir / "log" / "node.log"),
        })
        return env

    def write_config(self):
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "loopback_users = none",
            # a stopped or paused peer is noticed within seconds, not net_ticktime's minute
            "net_ticktime = 10",
            "cluster_partition_handling = pause_minority",
            "log.console = false",
            "log.file.level = info",
        ]
        plugins = "[]."
        if self.management_port:
            lines.append(f"management.tcp.port = {self.management_port}")
            lines.append("management.tcp.ip = 127.0.0.1")
            plugins = "[rabbitmq_management]."
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "advanced.config").write_text("[].\n")
        (self.dir / "enabled_plugins").write_text(plugins + "\n")

    def uri(self, vhost="/"):
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"


class RabbitCluster:
    def __init__(self, size=3, management=False, start_timeout=120.0, name="cluster"):
        reason = available()
        if reason:
            raise ClusterError(reason)
        self.run_id = uuid.uuid4().hex[:6]
        self.base = CLUSTER_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{self.run_id}"
        self.start_timeout = start_timeout
        taken = set()
        self.nodes = []
        for index in range(size):
            ports = (_free_port(taken), _free_port(taken),
                     _free_port(taken) if management else None)
            self.nodes.append(Node(self, index, ports))

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        try:
            self._prepare()
            for node in self.nodes:
                self._spawn(node)
            for node in self.nodes:
                self._await_startup(node)
            first = self.nodes[0]
            for node in self.nodes[1:]:
                self.ctl(node, "stop_app")
                self.ctl(node, "join_cluster", first.name)
                self.ctl(node, "start_app")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """End every node this fixture started and remove its directory. The data goes with
        it, so there is nothing a graceful shutdown would save: SIGKILL."""
        for node in self.nodes:
            self.kill_node(node.index)
        shutil.rmtree(self.base, ignore_errors=True)

    def _prepare(self):
        self.base.mkdir(parents=True, exist_ok=True)
        cookie = self.base / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper() + uuid.uuid4().hex.upper())
        for node in self.nodes:
            node.write_config()
        user = pwd.getpwnam(RUN_AS)
        for path in [self.base, *self.base.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        cookie.chmod(0o400)

    def _spawn(self, node):
        node.dir.mkdir(parents=True, exist_ok=True)
        with open(node.log_path, "ab") as out:
            # runuser keeps the environment given; rabbitmq-server execs erl, so the pid we
            # hold is the node's own Erlang VM
            node.popen = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, shutil.which("runuser"), "-u", RUN_AS, "--",
                 SERVER], env=node.env(), cwd=self.base,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        node.paused = False

    def _await_startup(self, node, timeout=None):
        timeout = timeout or self.start_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.running:
                raise ClusterError(f"{node.name} exited: {self._tail(node)}")
            try:
                if self.ctl(node, "await_startup", "--timeout", "10", check=False,
                            timeout=30).returncode == 0:
                    return
            except subprocess.TimeoutExpired:  # the CLI's own VM starts slowly on a busy box
                continue
            time.sleep(0.5)
        raise ClusterError(f"{node.name} did not start within {timeout:.0f} s: "
                           f"{self._tail(node)}")

    def _reap(self, node, timeout):
        if node.popen is None:
            return
        try:
            node.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.popen.pid, signal.SIGKILL)
            node.popen.wait(10)
        node.paused = False

    def _tail(self, node, lines=20):
        text = ""
        for path in (node.log_path, node.dir / "log" / "node.log"):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return text

    # -- control ------------------------------------------------------------------------------
    def ctl(self, node, *args, check=True, timeout=60):
        """Run ``rabbitmqctl`` against ``node`` (a Node or an index) as the rabbitmq user."""
        node = self._node(node)
        result = subprocess.run(
            ["runuser", "-u", RUN_AS, "--", CTL, "-n", node.name, *args], env=node.env(),
            cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ClusterError(f"rabbitmqctl {' '.join(args)} on {node.name}: "
                               f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def stop_node(self, index, timeout=30.0):
        """Stop one node cleanly (SIGTERM: RabbitMQ shuts down gracefully), then SIGKILL."""
        node = self.nodes[index]
        if node.running:
            if node.paused:
                self.resume_node(index)
            node.popen.send_signal(signal.SIGTERM)
            self._reap(node, timeout)

    def kill_node(self, index):
        """A crash: SIGKILL to the node's VM, no shutdown."""
        node = self.nodes[index]
        if node.running:
            os.killpg(node.popen.pid, signal.SIGKILL)
            node.popen.wait(10)
            node.paused = False

    def start_node(self, index, wait=True):
        """Start a stopped node again (same name, ports, data): it rejoins its cluster."""
        node = self.nodes[index]
        if node.running:
            return
        self._spawn(node)
        if wait:
            self._await_startup(node)
            self.wait_healthy()

    def restart_node(self, index):
        self.stop_node(index)
        self.start_node(index)

    def pause_node(self, index):
        """Freeze the node's VM (SIGSTOP): to its peers and clients it is cut off, not gone."""
        node = self.nodes[index]
        os.killpg(node.popen.pid, signal.SIGSTOP)
        node.paused = True

    def resume_node(self, index, heal=True):
        """Thaw a paused node. Frozen past ``net_ticktime``, it comes back seeing itself alone
        while its peers have dropped it (RabbitMQ 3.10 does not merge the two sides by itself
        here): with ``heal`` it is then restarted, as an operator would, and rejoins."""
        node = self.nodes[index]
        os.killpg(node.popen.pid, signal.SIGCONT)
        node.paused = False
        if heal:
            try:
                self.wait_healthy(timeout=10)
            except ClusterError:
                self.restart_node(index)

    @contextlib.contextmanager
    def paused(self, index):
        self.pause_node(index)
        try:
            yield
        finally:
            self.resume_node(index)

    def wait_leader_moved(self, vhost, queue, away_from, timeout=60.0):
        """Until quorum queue ``queue`` has a leader other than node ``away_from``; its index."""
        via = next(i for i in range(len(self.nodes)) if i != away_from)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                leader = self.queue_leader(vhost, queue, via=via)
                if leader != away_from:
                    return leader
            except (ClusterError, subprocess.TimeoutExpired):
                pass
            time.sleep(1)
        raise ClusterError(f"{queue} still led by node {away_from} after {timeout:.0f} s")

    # -- state --------------------------------------------------------------------------------
    def live_nodes(self):
        return [node for node in self.nodes if node.running and not node.paused]

    def running_nodes(self, via=None):
        """Names of the running nodes of the cluster as ``via`` (a live node) sees them."""
        via = via if via is not None else self.live_nodes()[0]
        out = self.ctl(via, "cluster_status", "--formatter", "json", timeout=30).stdout
        return sorted(json.loads(out)["running_nodes"])

    def wait_healthy(self, timeout=60.0):
        """Until every live node sees exactly the live nodes as running."""
        want = sorted(node.name for node in self.live_nodes())
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = [self.running_nodes(node) for node in self.live_nodes()]
            except (ClusterError, ValueError, KeyError, subprocess.TimeoutExpired):
                seen = None
            if seen and all(names == want for names in seen):
                return
            time.sleep(0.5)
        raise ClusterError(f"cluster not healthy within {timeout:.0f} s: want {want}, saw {seen}")

    def amqp_uri(self, vhost="/", order=None):
        """A multi-node ``AMQP_URI`` (``;``-separated), nodes in ``order`` (default 0, 1, 2)."""
        order = order if order is not None else range(len(self.nodes))
        return ";".join(self.nodes[i].uri(vhost) for i in order)

    def add_vhost(self, vhost, via=None):
        via = via if via is not None else self.live_nodes()[0]
        self.ctl(via, "add_vhost", vhost)
        self.ctl(via, "set_permissions", "-p", vhost, USER, ".*", ".*", ".*")

    def delete_vhost(self, vhost, via=None):
        live = self.live_nodes()
        if live:
            self.ctl(via if via is not None else live[0], "delete_vhost", vhost, check=False)

    def queues(self, vhost, via=None):
        """Queues of ``vhost``: ``{name: {"type", "leader", "members", "messages", "durable",
        "exclusive", "auto_delete", "arguments"}}``."""
        via = via if via is not None else self.live_nodes()[0]
        out = self.ctl(via, "list_queues", "-p", vhost, "name", "type", "leader", "members",
                       "messages", "durable", "exclusive", "auto_delete", "arguments",
                       "--formatter", "json", timeout=30).stdout
        return {row["name"]: row for row in json.loads(out)}

    def queue_leader(self, vhost, queue, via=None):
        """Index of the node leading quorum queue ``queue`` (or hosting a classic one)."""
        row = self.queues(vhost, via).get(queue)
        if row is None:
            raise ClusterError(f"no queue {queue!r} in {vhost!r}")
        leader = row.get("leader") or row.get("node")
        for node in self.nodes:
            if node.name == leader:
                return node.index
        raise ClusterError(f"queue {queue!r} has leader {leader!r}, not one of ours")

    def _node(self, node):
        return self.nodes[node] if isinstance(node, int) else node
