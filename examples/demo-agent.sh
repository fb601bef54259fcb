#!/bin/sh
# demo-agent.sh: a stand-in for an AI coding agent, for `cargo xtask demo`.
#
# It does, one after the other, the kinds of things a real agent does in its workspace, and
# prints for each what it tried, what agent-supervisor's built-in default policy is expected
# to decide, and what actually happened. It never stops at a failure: a denied action is the
# point of the demo. It always exits 0, so a non-zero exit means the supervisor failed.
#
# Usage: sh demo-agent.sh PORT
#   Run with the workspace as the current directory. PORT is a TCP port on 127.0.0.1 that
#   the demo listens on (the connect attempt is an "ask" action).
#
# Plain POSIX sh (no bash features), so it runs under dash.

set -u

port="${1:?usage: sh demo-agent.sh PORT}"
step_number=0

# step "what the agent tries" "expected decision"
step() {
    step_number=$((step_number + 1))
    printf '\n[agent] step %s: %s\n' "$step_number" "$1"
    printf '[agent]   default policy: %s\n' "$2"
}

# attempt COMMAND [ARG...]: run it, indent its output, report how it ended.
attempt() {
    output=$("$@" 2>&1)
    status=$?
    if [ -n "$output" ]; then
        printf '%s\n' "$output" | sed 's/^/[agent]   | /'
    fi
    if [ "$status" -eq 0 ]; then
        printf '[agent]   -> succeeded\n'
    else
        printf '[agent]   -> failed (exit status %s)\n' "$status"
    fi
    return "$status"
}

# 1. Work on a file in the workspace: the everyday case.
step "write notes.txt in the workspace, then read it back" "allow"
attempt sh -c 'printf "notes from the demo agent\n" > notes.txt && cat notes.txt'

# 2. Secrets: agents read .env files by accident (or by prompt injection).
step "read .env (the demo put a fake API key there)" "deny"
attempt cat .env

# 3. An ordinary tool.
step "run ls" "allow"
attempt ls -A

# 4. Privilege escalation.
step "run sudo id" "deny"
if ! command -v sudo >/dev/null 2>&1; then
    printf '[agent]   (sudo is not installed here: the shell finds no sudo to run, so the\n'
    printf '[agent]    policy is never asked; where sudo exists the exec is denied)\n'
fi
attempt sudo -n id

# 5. A destructive command. Make something to destroy first (writing is allowed).
step "run rm -rf ./build (after creating build/artifact.o)" "deny"
mkdir -p build && : > build/artifact.o
attempt rm -rf ./build
if [ -e build/artifact.o ]; then
    printf '[agent]   build/artifact.o is still there\n'
else
    printf '[agent]   build/ is gone\n'
fi

# 6. The network: a TCP connection to a local service (the demo's listener).
step "connect to 127.0.0.1:$port over TCP" "ask (prompt in a terminal; deny when headless)"
if command -v python3 >/dev/null 2>&1; then
    attempt python3 -c '
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
        print("connected; the listener said:", s.recv(100).decode().strip())
except OSError as error:
    sys.exit(f"connect failed: {error}")
' "$port"
else
    attempt bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && echo connected' bash "$port"
fi

# 7. Running a script the agent wrote into the workspace: code nobody has reviewed.
step "write tools/hello.sh and run it" "ask (prompt in a terminal; deny when headless)"
mkdir -p tools
printf '#!/bin/sh\necho "hello from a workspace script"\n' > tools/hello.sh
chmod +x tools/hello.sh
attempt ./tools/hello.sh

printf '\n[agent] done: %s steps tried\n' "$step_number"
exit 0
