"""A fleet of accelerators that are each other's peers, on loopback addresses of their own (127.0.0.N).

Each host is a real `dogestry serve` process: the registry API on 127.0.0.N:<port> (loopback, so
Docker and skopeo may use plain HTTP), the peer listener on 127.0.0.N:<peer port> with TLS (a CA and
one certificate naming every host's address, made here with `cryptography`, which moto already
needs) and the fleet's secret, and a peers file naming all of them. Used by tests/integration/
test_peers.py and benchmarks/peers_bench.py, so it needs no pytest.
"""

import datetime
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def make_tls(directory, addresses):
    """(CA certificate file, certificate file, key file): a CA and one server certificate for `addresses`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dogestry test fleet CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dogestry test fleet")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem")]
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        with open(path, "wb") as handle:
            handle.write(data)
    os.chmod(paths[2], 0o600)
    return paths


def free_port(address):
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class Host:
    """One accelerator of the fleet (started by Fleet.start)."""

    def __init__(self, fleet, index, address):
        self.fleet, self.index, self.address = fleet, index, address
        self.port, self.peer_port = free_port(address), free_port(address)
        self.url = "https://%s:%d" % (address, self.peer_port)
        self.cache = os.path.join(fleet.directory, "cache-%d" % index)
        self.log_path = os.path.join(fleet.directory, "serve-%d.log" % index)
        self.peers_file = os.path.join(fleet.directory, "peers-%d.json" % index)
        self.proc = None

    @property
    def registry(self):
        return "%s:%d" % (self.address, self.port)

    def command(self):
        peers = ["--peers-file", self.peers_file, "--peer-listen", "%s:%d" % (self.address, self.peer_port),
                 "--peer-tls-cert", self.fleet.cert, "--peer-tls-key", self.fleet.key] if self.fleet.peers else []
        return ([self.fleet.dogestry, "serve", self.fleet.remote, "--listen", self.registry, "--read-only",
                 "--cache-dir", self.cache] + peers + list(self.fleet.remote_args) + list(self.fleet.extra_args))

    def start(self, wait=True):
        with open(self.peers_file, "w") as handle:
            json.dump(dict(self.fleet.peers_doc, self=self.url), handle)
        log = open(self.log_path, "ab")
        self.log_start = log.tell()
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=self.fleet.env)
        finally:
            log.close()
        if wait:
            self.wait()

    def wait(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "dogestry: serving" in self.output()[self.log_start:]:
                return
            if self.proc.poll() is not None:
                raise AssertionError("dogestry serve of host %d exited %d:\n%s"
                                     % (self.index, self.proc.returncode, self.output()[-3000:]))
            time.sleep(0.05)
        raise AssertionError("dogestry serve of host %d did not start:\n%s" % (self.index, self.output()[-3000:]))

    def output(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("latin-1")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def metrics(self):
        """{'name{labels}': value} of its /metrics."""
        with urllib.request.urlopen("http://%s/metrics" % self.registry, timeout=30) as response:
            text = response.read().decode()
        found = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _sep, value = line.rpartition(" ")
                found[name] = float(value)
        return found

    def metric(self, name, **labels):
        """The sum of a counter over the series whose labels include `labels`."""
        total = 0.0
        for series, value in self.metrics().items():
            base, _sep, rest = series.partition("{")
            if base != name:
                continue
            if all('%s="%s"' % item in rest for item in labels.items()):
                total += value
        return total

    def peak_rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0


class Fleet:
    """`count` accelerators over `remote`, each the peer of the others, on 127.0.0.<base>.. (no TLS for the
    registry API: loopback; TLS and the secret between peers). `dogestry`: the command to run;
    `env`: its environment; `settings`: the peers file's settings (e.g. {"max_uploads": 2})."""

    def __init__(self, directory, remote, count, dogestry, env, remote_args=(), extra_args=(), base=20,
                 settings=None, peers=True):
        """`peers=False`: the same accelerators, each reading the remote alone (the baseline)."""
        self.directory, self.remote, self.dogestry, self.env, self.peers = directory, remote, dogestry, env, peers
        self.remote_args, self.extra_args = list(remote_args), list(extra_args)
        os.makedirs(directory, exist_ok=True)
        addresses = ["127.0.0.%d" % (base + i) for i in range(count)]
        self.ca, self.cert, self.key = make_tls(os.path.join(directory, "tls"), addresses)
        self.hosts = [Host(self, i, address) for i, address in enumerate(addresses)]
        self.peers_doc = {"peers": [host.url for host in self.hosts], "ca_file": self.ca,
                          "secret": secrets.token_urlsafe(24)}
        if settings:
            self.peers_doc["settings"] = settings
        self.client_peers_file = os.path.join(directory, "peers-client.json")
        with open(self.client_peers_file, "w") as handle:
            json.dump(self.peers_doc, handle)

    def start(self):
        for host in self.hosts:
            host.start(wait=False)
        for host in self.hosts:
            host.wait()
        return self

    def stop(self):
        for host in self.hosts:
            host.stop()

    def logs(self, limit=4000):
        return "\n".join("--- host %d (%s)\n%s" % (h.index, h.address, h.output()[-limit:]) for h in self.hosts)
