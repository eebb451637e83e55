"""A test CA and a RabbitMQ node of the test's own that speaks AMQP over TLS only.

``make_ca(directory)`` writes a CA and a server certificate for ``localhost`` / 127.0.0.1
(``cryptography``); ``TlsRabbit(directory, ca)`` starts a node (its own name, ports, data and
log directories, as STACK_NOTES.md describes for a second node) whose only listener is TLS,
and stops it at ``stop()``. The system node, which everyone else uses, is left alone.
"""

import datetime
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Ca:
    cert: Path
    server_cert: Path
    server_key: Path


def _key(path):
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return key


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory, name="plinth test CA"):
    """A CA and a server certificate it signed, for localhost and 127.0.0.1."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _key(directory / "ca.key")
    ca_cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_key = _key(directory / "server.key")
    server_cert = (x509.CertificateBuilder().subject_name(_name("localhost"))
                   .issuer_name(ca_cert.subject).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([
                       x509.DNSName("localhost"),
                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    (directory / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return Ca(directory / "ca.pem", directory / "server.pem", directory / "server.key")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TlsRabbit:
    """A RabbitMQ node listening for AMQP over TLS only, on a free port."""

    def __init__(self, directory, ca):
        self.directory = Path(directory)
        self.ca = ca
        self.port = free_port()
        self.node = f"tls{uuid.uuid4().hex[:8]}@localhost"

    @property
    def amqp_uri(self):
        return f"amqp://guest:guest@localhost:{self.port}/"

    def _env(self):
        d = self.directory
        return {**os.environ, "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(free_port()), "RABBITMQ_DIST_PORT": str(free_port()),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(d / "node.pid")}

    def start(self, timeout=60.0):
        d = self.directory
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq.conf").write_text(
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {self.ca.cert}\n"
            f"ssl_options.certfile = {self.ca.server_cert}\n"
            f"ssl_options.keyfile = {self.ca.server_key}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n")
        _give_to_rabbitmq(d)
        subprocess.run(["rabbitmq-server", "-detached"], env=self._env(), check=True,
                       capture_output=True, timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the TLS RabbitMQ node did not listen within {timeout:g}s; "
                           f"see {d / 'log'}")

    def connections(self):
        """(user, ssl) of every client connection, from rabbitmqctl."""
        result = subprocess.run(["rabbitmqctl", "-n", self.node, "-q", "list_connections",
                                 "user", "ssl"], env=self._env(), capture_output=True,
                                text=True, timeout=60)
        rows = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
        return [(user, flag == "true") for user, flag in rows if user != "user"]

    def stop(self):
        subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], env=self._env(),
                       capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)  # data, logs and certificates


def available():
    return shutil.which("rabbitmq-server") is not None and shutil.which("rabbitmqctl") is not None


def _give_to_rabbitmq(directory):
    # Debian's wrapper runs the node as the rabbitmq user (STACK_NOTES.md)
    try:
        user = pwd.getpwnam("rabbitmq")
    except KeyError:
        return
    if os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(directory):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, user.pw_uid, user.pw_gid)
