"""The lines of a requirements file that the running interpreter does not satisfy.

    python scripts/requirements_check.py requirements.txt     # prints them, one per line

A line whose comment starts with ``optional:`` (``tensorboard>=2.14  # optional: no TensorBoard
log``) is never printed: when it is not satisfied, one ``warning:`` line on stderr says what is
missing and what the comment says degrades (``--quiet-optional``: no warnings).

A requirement is satisfied when its module imports (found, not imported: torch stays cold) and,
where ``packaging`` is at hand (standalone or pip's copy), its installed version is inside the
range and its environment marker applies. The module is what counts, not the distribution's name:
``opencv-python`` or ``opencv-contrib-python`` provide ``cv2`` as well as the headless wheel, and
``onnxruntime-gpu`` provides ``onnxruntime``. Used by ``scripts/install.sh`` for
``DMLCSR_PYTHON``: an interpreter whose packages are all there installs nothing and needs no
registry.
"""
import importlib.metadata as metadata
import importlib.util
import re
import sys

MODULES = {"opencv-python-headless": "cv2", "pyyaml": "yaml"}   # distribution -> module


def _packaging():
    try:
        from packaging.requirements import Requirement
    except ImportError:
        try:
            from pip._vendor.packaging.requirements import Requirement
        except ImportError:
            return None
    return Requirement


def _version(dist: str, module: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    for other in metadata.packages_distributions().get(module, []):   # e.g. opencv-python
        try:
            return metadata.version(other)
        except metadata.PackageNotFoundError:
            continue
    return None


def optional_note(line: str):
    """The text after ``# optional:`` in a requirement line, or None for a required one."""
    comment = line.split("#", 1)[1].strip() if "#" in line else ""
    if comment.lower().startswith("optional:"):
        return comment[len("optional:"):].strip()
    return None


def unmet(lines, optional=False):
    """The requirement lines (comments dropped) that are not satisfied here: the required ones,
    or with ``optional`` the optional ones (module docstring)."""
    Requirement = _packaging()
    out = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or (optional_note(raw) is not None) != optional:
            continue
        name = re.match(r"[A-Za-z0-9_.\-]+", line).group(0)
        module = MODULES.get(name.lower(), name.replace("-", "_").lower())
        req = Requirement(line) if Requirement else None
        if req is not None and req.marker is not None and not req.marker.evaluate():
            continue                                   # not for this platform
        if importlib.util.find_spec(module) is None:
            out.append(line)
            continue
        version = _version(name, module)
        if req is not None and version is not None and req.specifier and \
                not req.specifier.contains(version, prereleases=True):
            out.append(line)
    return out


def main(argv):
    args = [a for a in argv[1:] if a != "--quiet-optional"]
    with open(args[0], encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in unmet(lines):
        print(line)
    if "--quiet-optional" not in argv:
        notes = {raw.split("#", 1)[0].strip(): optional_note(raw) for raw in lines}
        for line in unmet(lines, optional=True):
            print(f"warning: optional {line.split(';', 1)[0].strip()} is missing: {notes[line]}",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
