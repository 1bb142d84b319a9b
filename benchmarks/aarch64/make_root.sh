#!/usr/bin/env bash
# An aarch64 Debian root, run through qemu-user-static, with edgeq's runtime install inside it:
#   sudo bash benchmarks/aarch64/make_root.sh [ROOT]         (default /var/tmp/edgeq-arm64; ~10 minutes)
# Then benchmarks/aarch64/compare.py runs exported folders in it. Needs root (debootstrap, chroot, mounts)
# and Debian's packages; PyPI's aarch64 wheels of numpy, onnxruntime and tokenizers do the rest.
# Run it again to refresh edgeq inside the root after a change to the runtime.
set -euo pipefail
ROOT=${1:-/var/tmp/edgeq-arm64}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
command -v debootstrap >/dev/null && [ -x /usr/bin/qemu-aarch64-static ] ||
  apt-get install -y -q debootstrap qemu-user-static binfmt-support
# the kernel runs aarch64 binaries through qemu once binfmt_misc knows the format
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT" http://deb.debian.org/debian
fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
# No /sys inside: with the host's /sys bind-mounted, `import onnxruntime` segfaults under qemu-aarch64 7.2
# (its cpuinfo parses x86 cache topology as ARM); without it onnxruntime warns that cpuinfo failed and reads
# the CPU features from the auxiliary vector instead (getauxval: dot product, i8mm, SVE, bf16 as qemu grants).
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# the host's trust store: a proxy that inspects TLS (as on our build machines) signs with its own CA
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
[ -x "$ROOT/opt/venv/bin/pip" ] || chroot "$ROOT" python3 -m venv /opt/venv
rm -rf "$ROOT/opt/edgeq-src" && mkdir -p "$ROOT/opt/edgeq-src"
git -C "$SRC" ls-files -z | (cd "$SRC" && xargs -0 tar -c) | tar -x -C "$ROOT/opt/edgeq-src"  # the working tree, tracked files
env PIP_FIND_LINKS= chroot "$ROOT" /opt/venv/bin/pip install --quiet --force-reinstall --no-deps /opt/edgeq-src
env PIP_FIND_LINKS= chroot "$ROOT" /opt/venv/bin/pip install --quiet "/opt/edgeq-src[runtime]"
chroot "$ROOT" /opt/venv/bin/python -c "import platform, onnxruntime; from edgeq.runtime.report import cpu_info; \
print(platform.machine(), 'onnxruntime', onnxruntime.__version__, cpu_info())"
