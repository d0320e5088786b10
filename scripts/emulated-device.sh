#!/usr/bin/env bash
# By hand, not CI: makes this machine its own aarch64 "device" for the --device path. The
# aarch64 nnzip and ONNX Runtime from scripts/build-device.sh run under qemu-aarch64-static
# (qemu-user 10.x from bookworm-backports; bookworm's 7.2 crashes in ONNX Runtime's CPU
# detection). binfmt_misc is not mounted, so the exec prefix comes from an sshd forced command:
# an sshd on loopback (throwaway keys in target/emu/) runs every command with a PATH holding
#   nnzip  -> qemu-aarch64-static -L /usr/aarch64-linux-gnu dist/aarch64/nnzip
#   uname  -> `uname -m` says aarch64, the emulated CPU
# and writes target/emu/devices.toml with the device `emu-aarch64`. Numbers measured this way
# are emulation numbers (docs/benchmarks.md labels them so). Stop it with
#   kill "$(cat target/emu/sshd.pid)"
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dist=$root/dist/aarch64
w=$root/target/emu
lib=$(ls "$dist"/libonnxruntime.so.* 2>/dev/null | head -n1 || true)
[ -x "$dist/nnzip" ] && [ -n "$lib" ] || { echo "emulated-device: run scripts/build-device.sh aarch64 first" >&2; exit 1; }
qemu=$(command -v qemu-aarch64-static || true)
[ -n "$qemu" ] || { echo "emulated-device: needs qemu-aarch64-static (apt-get install -t bookworm-backports qemu-user-static)" >&2; exit 1; }
"$qemu" --version | head -n1 | grep -Eq 'version ([89]|[1-9][0-9])\.' || echo "emulated-device: warning: qemu older than 8 crashes in ONNX Runtime" >&2
[ -f "$w/sshd.pid" ] && kill "$(cat "$w/sshd.pid")" 2>/dev/null || true
rm -rf "$w"; mkdir -p "$w/bin" "$w/home" /run/sshd
ssh-keygen -q -t ed25519 -N "" -f "$w/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$w/user_key"
cp "$w/user_key.pub" "$w/authorized_keys"
cat > "$w/bin/nnzip" <<SH
#!/bin/sh
exec $qemu -L /usr/aarch64-linux-gnu $dist/nnzip "\$@"
SH
cat > "$w/bin/uname" <<'SH'
#!/bin/sh
case "$1" in -m|-p|-i) echo aarch64 ;; *) exec /bin/uname "$@" ;; esac
SH
cat > "$w/force.sh" <<SH
#!/bin/sh
PATH=$w/bin:\$PATH; export PATH
exec /bin/sh -c "\$SSH_ORIGINAL_COMMAND"
SH
chmod +x "$w/bin/nnzip" "$w/bin/uname" "$w/force.sh"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
user=$(id -un)
cat > "$w/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $w/host_key
PidFile $w/sshd.pid
AuthorizedKeysFile $w/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
AllowUsers $user
LogLevel ERROR
SetEnv HOME=$w/home
ForceCommand $w/force.sh
CFG
echo "[127.0.0.1]:$port $(cat "$w/host_key.pub")" > "$w/known_hosts"
/usr/sbin/sshd -f "$w/sshd_config"
cat > "$w/devices.toml" <<TOML
[[device]]
name = "emu-aarch64"
ssh = "$user@127.0.0.1"
port = $port
identity = "$w/user_key"
ssh_options = ["UserKnownHostsFile=$w/known_hosts", "StrictHostKeyChecking=yes"]
ort = "$lib"
connect_timeout = 10
timeout = 3600
TOML
echo "$w/devices.toml"
