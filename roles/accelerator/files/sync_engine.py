"""Make DIR hold exactly the engine files given as JSON {relative path: text} on stdin; print the paths
it changed (or, with "check", would change). One run instead of a copy task per file, which over SSH
costs about a second each. Run by the host's own python3, before the role's virtualenv exists."""

import json
import os
import sys


def main(target, check):
    files = json.load(sys.stdin)
    outside = [name for name in files if os.path.isabs(name) or ".." in name.split("/")]
    if outside:      # a path the role computed wrongly must not write (or delete) anything
        sys.exit("sync_engine: engine paths must be relative to the engine directory: %s" % outside[:3])
    present = set()
    for root, dirs, names in os.walk(target):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        present.update(os.path.relpath(os.path.join(root, n), target) for n in names)
    changed = []
    for name, text in sorted(files.items()):
        path = os.path.join(target, name)
        try:
            with open(path, encoding="utf-8") as f:
                same = f.read() == text
        except FileNotFoundError:
            same = False
        if not same:
            changed.append(name)
            if not check:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                with open(path + ".tmp", "w", encoding="utf-8") as f:
                    f.write(text)
                os.chmod(path + ".tmp", 0o644)
                os.replace(path + ".tmp", path)
    for name in sorted(present):
        if name.endswith(".py") and name not in files:      # a file an earlier release had
            changed.append(name)
            if not check:
                os.unlink(os.path.join(target, name))
    print(json.dumps(changed))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] == ["check"])
