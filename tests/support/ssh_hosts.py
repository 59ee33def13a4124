"""Hosts as an operator meets them, on one machine: each is reached over SSH (an sshd of its own on a
loopback address of its own, 127.0.0.N) and sees a filesystem of its own where Ansible roles write
(/etc, /opt, /usr/local and /var/cache are overlays private to its mount namespace), so that what one
host's role installs or blocks is seen by that host alone, as on separate machines. A fleet host also
has a dockerd of its own, inside its mount namespace (it reads the host's /etc/docker/daemon.json and
/etc/hosts) and in a network namespace holding nothing but loopback. The rest of the machine is
shared: /usr, /tmp (where the test keeps the remote), /var/lib (dpkg's database), /run.

Ansible finds the host's own Python by interpretation discovery: the machine's python3, without
docker, lz4 or requests until the collection's fleet.yml gives the host an environment of its own.
"""

import os
import signal
import socket
import subprocess
import time

from docker_daemons import Dockerd, _stop_group

# Where roles (and Ansible) write: private to each host (an overlay on the machine's own directory).
PRIVATE_DIRS = ("etc", "opt", "usr/local", "var/cache", "root")
# A fresh Debian's root shell files: this machine's own put other Pythons first on PATH, which
# Ansible's interpreter discovery would find.
FRESH_ROOT_FILES = "cp /usr/share/base-files/dot.bashrc /root/.bashrc && cp /usr/share/base-files/dot.profile /root/.profile"
SSHD = "/usr/sbin/sshd"


def free_port_on(address):
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _popen(cmd, log_path):
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def client_key(directory):
    """The operator's SSH key pair: (private key path, public key text)."""
    key = os.path.join(directory, "id_ed25519")
    if not os.path.exists(key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dogestry-fleet-test", "-f", key],
                       check=True)
    with open(key + ".pub") as f:
        return key, f.read()


class SshHost:
    """A host of its own mount namespace, reached by SSH at `address`:`port` as root with `key`."""

    def __init__(self, name, address, directory, authorized_keys):
        self.name, self.address, self.dir = name, address, directory
        os.makedirs(directory)
        self.port = free_port_on(address)
        self.holder = self.sshd = None
        self.authorized_keys = authorized_keys

    def start(self):
        ready = os.path.join(self.dir, "ready")
        mounts = "; ".join(
            'mkdir -p "$0/upper/{d}" "$0/work/{d}" && mount -t overlay overlay '
            '-o "lowerdir=/{d},upperdir=$0/upper/{d},workdir=$0/work/{d}" "/{d}"'.format(d=d) for d in PRIVATE_DIRS)
        self.holder = _popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                              "set -e; %s; %s; touch \"$0/ready\"; exec sleep infinity" % (mounts, FRESH_ROOT_FILES),
                              self.dir],
                             os.path.join(self.dir, "holder.log"))
        self._wait(lambda: os.path.exists(ready), "its mount namespace")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)     # sshd's privilege separation directory
        hostkey = os.path.join(self.dir, "ssh_host_ed25519_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostkey], check=True)
        with open(hostkey + ".pub") as f:
            self.hostkey = f.read().split()[:2]
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as f:
            f.write("ListenAddress %s:%d\nHostKey %s\nPidFile %s/sshd.pid\nAuthorizedKeysFile %s\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
                    % (self.address, self.port, hostkey, self.dir, self.authorized_keys))
        self.sshd = _popen(self.enter() + [SSHD, "-D", "-e", "-f", config], os.path.join(self.dir, "sshd.log"))
        self._wait(self._answers, "sshd on %s:%d" % (self.address, self.port))

    def enter(self):
        """A command prefix that runs in this host's mount namespace (the machine's network)."""
        return ["nsenter", "--mount=/proc/%d/ns/mnt" % self.holder.pid, "--"]

    def path(self, path):
        """`path` as this host sees it, from the test's side."""
        return "/proc/%d/root%s" % (self.holder.pid, path)

    def known_hosts_line(self):
        return "[%s]:%d %s %s\n" % (self.address, self.port, self.hostkey[0], self.hostkey[1])

    def ssh_vars(self):
        return {"ansible_host": self.address, "ansible_port": self.port}

    def _answers(self):
        if self.sshd.poll() is not None:
            raise RuntimeError("sshd of %s exited %s: %s" % (self.name, self.sshd.returncode, self._log("sshd.log")))
        with socket.create_connection((self.address, self.port), timeout=2) as sock:
            return sock.recv(4).startswith(b"SSH-")

    def _log(self, name):
        with open(os.path.join(self.dir, name), "rb") as f:
            return f.read()[-2000:].decode("utf-8", "replace")

    def _wait(self, check, what, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.holder.poll() is not None:
                raise RuntimeError("the namespace of %s exited: %s" % (self.name, self._log("holder.log")))
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("%s of %s did not come up within %ds" % (what, self.name, timeout))

    def stop(self):
        if self.sshd:
            _stop_group(self.sshd)
        if self.holder:
            _stop_group(self.holder)      # the last process of the namespace: its overlays go with it


class HostDockerd(Dockerd):
    """Debian's dockerd 20.10 inside a host's mount namespace (its /etc/docker/daemon.json, its
    /etc/hosts) and in a network namespace of its own with nothing but loopback."""

    def __init__(self, host, log_path):
        super().__init__(host.name, os.path.join(host.dir, "docker"), log_path, network="own")
        self.ssh_host = host

    def start(self):
        namespace = "dogestry-%s-%d" % (self.name, os.getpid())
        cmd = self.ssh_host.enter() + [
            "unshare", "--net", "--", "dockerd", "--config-file", "/etc/docker/daemon.json", "-H", self.host,
            "--data-root", os.path.join(self.dir, "data"), "--exec-root", os.path.join(self.dir, "exec"),
            "--pidfile", os.path.join(self.dir, "pid"), "--iptables=false", "--ip6tables=false",
            "--containerd-namespace", namespace, "--containerd-plugins-namespace", namespace + "-plugins"]
        self.proc = _popen(cmd, self.log_path)     # nsenter and unshare exec: proc is dockerd itself

    def reload(self):
        """What `systemctl reload docker` does (registry_block's handler; these hosts have no systemd)."""
        os.kill(self.proc.pid, signal.SIGHUP)
