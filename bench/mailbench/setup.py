"""What the bench needs on the machine: Debian packages (installed once) and a release build."""

import os
import platform
import shutil
import subprocess
import time

from .procs import BenchError, log, run

# Each check -> the Debian package that provides it.
PACKAGES = {
    "/usr/sbin/smtp-sink": "postfix",  # smtp-sink, smtp-source and the Postfix peer itself
    "/usr/bin/sqlite3": "sqlite3",
    "/usr/bin/openssl": "openssl",
    "matplotlib": "python3-matplotlib",
}


def _present(check):
    if check.startswith("/"):
        return os.path.exists(check)
    try:
        __import__(check)
        return True
    except ImportError:
        return False


def ensure_packages(extra=None):
    """PACKAGES and `extra` (more checks of one bench, e.g. bench/api's wrk)."""
    wanted = {**PACKAGES, **(extra or {})}
    missing = sorted({pkg for check, pkg in wanted.items() if not _present(check)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing packages {' '.join(missing)}: run as root or apt-get install them")
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if "postfix" in missing:
        # No system-wide mail server: the bench runs its own private Postfix instance.
        subprocess.run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select No configuration\n",
                       text=True, check=False)
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        run(["apt-get", "update"], env=env, timeout=600)
        run(install, env=env, timeout=1200)


def build_release(repo, scratch, logfile, attempts=2):
    """`swift build -c release --static-swift-stdlib` of the checkout into its own scratch folder
    (the Swift runtime linked in, as `make deb` ships it: its RSS is what an operator sees);
    returns the bin dir.
    Others edit the tree meanwhile: a build that fails is tried once more a minute later."""
    for attempt in range(1, attempts + 1):
        try:
            return _build(repo, scratch, logfile)
        except BenchError as error:
            if attempt == attempts:
                raise
            log(f"{str(error).splitlines()[0]}; trying again in 60 s")
            time.sleep(60)


def _build(repo, scratch, logfile):
    swift = shutil.which("swift")
    if swift is None:
        raise BenchError("swift is not on PATH")
    log(f"release build into {os.path.relpath(scratch, repo)} (a first one takes several minutes)")
    started = time.monotonic()
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    with open(logfile, "w") as out:
        try:
            done = subprocess.run([swift, "build", "-c", "release", "--static-swift-stdlib", "--scratch-path", scratch],
                                  cwd=repo, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
        except subprocess.TimeoutExpired:
            raise BenchError(f"release build did not finish within an hour (log: {logfile})")
    if done.returncode != 0:
        with open(logfile) as f:
            tail = "".join(f.readlines()[-30:])
        raise BenchError(f"release build failed (log: {logfile}):\n{tail}")
    bindir = run([swift, "build", "-c", "release", "--scratch-path", scratch, "--show-bin-path"], cwd=repo).strip()
    log(f"build done in {time.monotonic() - started:.0f} s")
    for name in ("mailrouted", "mailroutectl"):
        if not os.access(os.path.join(bindir, name), os.X_OK):
            raise BenchError(f"{name} missing in {bindir}")
    return bindir


def git_describe(repo):
    try:
        commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=repo).strip()
        dirty = run(["git", "status", "--porcelain", "--", "Sources", "Package.swift"], cwd=repo)
        return commit + (" + uncommitted changes in Sources" if dirty.strip() else "")
    except BenchError:
        return "unknown"


def machine():
    """Cores, CPU model, Debian release and kernel, for the head of a results table."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        with open("/etc/debian_version") as f:
            debian = "Debian " + f.read().strip()
    except OSError:
        debian = platform.system()
    return f"{os.cpu_count()} cores ({model}), {debian}, Linux {platform.release()}"
