"""Several copies of a remote: reads from the first that answers, writes to the primary, a failed copy tried last."""

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import RemoteError, RemoteNotFoundError
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.remote_list import FAILURE_MEMORY, RemoteList

BLOB = "blobs/sha256/ab/" + "ab" * 32
TAG = "repositories/app/_tags/1"


class Down(LocalRemote):
    """A copy that cannot be reached; counts the attempts."""

    def __init__(self, root):
        LocalRemote.__init__(self, root)
        self.tries = 0

    def _down(self, *args, **kwargs):
        self.tries += 1
        raise RemoteError("cannot reach %s" % self.url)

    get = open = stat = get_range = _down


class Lazy(LocalRemote):
    """Opens at once, fails on the first read (as S3's ranged reads, started in the background)."""

    def open(self, key, size=None):
        class Failing:
            def read(self, size=-1):
                raise RemoteError("the connection broke before the first byte")

            def close(self):
                pass
        return Failing()


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def copies(tmp_path):
    primary, replica = Down(str(tmp_path / "primary")), LocalRemote(str(tmp_path / "replica"))
    replica.put(TAG, b"sha256:x\n")
    replica.put(BLOB, b"blob")
    return primary, replica


def test_reads_come_from_the_first_copy_that_answers_and_a_failed_one_is_tried_last_for_a_while(copies):
    primary, replica = copies
    clock = Clock()
    remotes = RemoteList([primary, replica], clock)
    assert remotes.get(TAG) == b"sha256:x\n" and primary.tries == 1
    with remotes.open(BLOB) as body:
        assert body.read() == b"blob"
    assert primary.tries == 1                   # skipped: it failed a moment ago
    clock.now += FAILURE_MEMORY
    assert remotes.stat([BLOB]) and primary.tries == 2


def test_a_tag_the_first_answering_copy_lacks_is_missing_but_a_blob_is_looked_for_in_the_others(tmp_path):
    primary, replica = LocalRemote(str(tmp_path / "primary")), LocalRemote(str(tmp_path / "replica"))
    replica.put(TAG, b"sha256:old\n")
    replica.put(BLOB, b"blob")
    remotes = RemoteList([primary, replica])
    with pytest.raises(RemoteNotFoundError):
        remotes.get(TAG)                        # the primary answered: no such tag (the replica may lag)
    assert remotes.get(BLOB) == b"blob"


def test_a_copy_that_fails_before_its_first_byte_hands_the_read_to_the_next(tmp_path):
    lazy, replica = Lazy(str(tmp_path / "primary")), LocalRemote(str(tmp_path / "replica"))
    replica.put(BLOB, b"blob")
    with RemoteList([lazy, replica]).open(BLOB) as body:
        assert body.read() == b"blob"


def test_writes_go_to_the_primary_only(tmp_path):
    primary, replica = LocalRemote(str(tmp_path / "primary")), LocalRemote(str(tmp_path / "replica"))
    remotes = RemoteList([primary, replica])
    assert remotes.put(TAG, b"sha256:y\n", overwrite=True)
    assert primary.get(TAG) == b"sha256:y\n" and replica.stat([TAG]) == {}


def test_when_every_copy_fails_the_error_names_each(tmp_path):
    remotes = RemoteList([Down(str(tmp_path / "a")), Down(str(tmp_path / "b"))])
    with pytest.raises(RemoteError, match="every copy of the remote failed: cannot reach .*a; cannot reach .*b"):
        remotes.get(TAG)
