#!/usr/bin/env bash
# make demo: a whole three-person chat through the real binaries, as a new user
# would run it, printed as one transcript.
#
# Starts mpchatd on a free loopback port in a temporary state directory, adds alice,
# bob and carol, makes their keys, and drives three mpchat clients through named pipes:
# every step waits for the event line the previous one causes, so nothing depends on
# sleeps or timing.  Each transcript line is prefixed with the user's name; lines
# whose text starts with "/" are what the user typed, the others are mpchat's events.
# Everything it started is stopped and the directory removed on exit, success or not.
# A step that does not happen within STEP_TIMEOUT seconds (20), or the whole demo not
# within DEMO_TIMEOUT (60), fails the demo with the transcript so far, each client's
# standard error and the server log.
#
# Usage: bash tests/demo.sh [DIR]   DIR holds mpchatd and mpchat (default target/debug)
set -euo pipefail

bindir=${1:-target/debug}
MPCHATD=$bindir/mpchatd
MPCHAT=$bindir/mpchat
STEP_TIMEOUT=${STEP_TIMEOUT:-20}
DEMO_TIMEOUT=${DEMO_TIMEOUT:-60}
USERS=(alice bob carol)

for b in "$MPCHATD" "$MPCHAT"; do
	if [ ! -x "$b" ]; then
		echo "demo: $b is missing: build first (cargo build --locked), or run make demo" >&2
		exit 1
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mpchat-demo.XXXXXX")
server_pid=
declare -A client_pid=() shown=() in_fd=()

cleanup() {
	local pid
	for pid in "${client_pid[@]}" $server_pid; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${client_pid[@]}" $server_pid; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# A client that died makes writes to its pipe fail with EPIPE, reported by type_line,
# instead of killing this script before it can say why.
trap '' PIPE

say() { printf 'demo: %s\n' "$*"; }

# Prints each client's output lines not yet shown, prefixed with its name.
show_new() {
	local u n
	for u in "${USERS[@]}"; do
		[ -f "$tmp/$u.out" ] || continue
		n=${shown[$u]:-0}
		tail -n +"$((n + 1))" "$tmp/$u.out" | while IFS= read -r line; do
			printf '%-6s %s\n' "$u:" "$line"
		done
		shown[$u]=$(wc -l <"$tmp/$u.out")
	done
}

fail() {
	show_new
	{
		echo "demo: FAILED: $*"
		local u
		for u in "${USERS[@]}"; do
			if [ -s "$tmp/$u.err" ]; then
				echo "demo: $u's standard error:"
				sed "s/^/  /" "$tmp/$u.err"
			fi
		done
		if [ -s "$tmp/server.log" ]; then
			echo "demo: the server log:"
			sed "s/^/  /" "$tmp/server.log"
		fi
	} >&2
	exit 1
}

# wait_for_line FILE WHO REGEX: waits until FILE has a line matching the extended
# REGEX (anchored by the caller) and puts it in $MATCH.  No command substitution
# here or in expect: the transcript bookkeeping must stay in this shell.
MATCH=
wait_for_line() {
	local file=$1 who=$2 re=$3 deadline=$((SECONDS + STEP_TIMEOUT)) limit=$STEP_TIMEOUT
	if [ "$deadline" -gt "$DEMO_TIMEOUT" ]; then
		deadline=$DEMO_TIMEOUT limit="the demo's $DEMO_TIMEOUT"
	fi
	while :; do
		if grep -E -q -- "$re" "$file" 2>/dev/null; then
			MATCH=$(grep -E -m 1 -- "$re" "$file")
			return 0
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			fail "$who printed no line matching /$re/ within $limit s"
		fi
		sleep 0.05
	done
}

# expect USER REGEX: waits for USER's event line (into $MATCH), then shows the new
# lines of every client.
expect() {
	wait_for_line "$tmp/$1.out" "$1" "$2"
	show_new
}

# type USER COMMAND: what USER types into mpchat.
type_line() {
	show_new
	printf '%-6s %s\n' "$1:" "$2"
	printf '%s\n' "$2" >&"${in_fd[$1]}" || fail "$1's mpchat no longer reads its input"
}

say "mpchatd --version: $("$MPCHATD" --version)"

# The server, on a port the kernel picks; it says which on its first line.
"$MPCHATD" --state-dir "$tmp/state" --listen 127.0.0.1:0 --invite-wait 10 \
	</dev/null >"$tmp/server.out" 2>"$tmp/server.log" &
server_pid=$!
wait_for_line "$tmp/server.out" mpchatd '^listening on '
addr=${MATCH#listening on }
fingerprint=$(sed -n 's/.*server key fingerprint //p' "$tmp/server.log" | head -n 1)
say "mpchatd listening on $addr, state in $tmp/state, server key $fingerprint"

# Accounts (the running server picks them up) and keys, as the README shows.
umask 077
for u in "${USERS[@]}"; do
	printf 'demo-%s-password\n' "$u" >"$tmp/$u.pw"
	out=$("$MPCHATD" useradd "$u" --state-dir "$tmp/state" --password-stdin --iterations 1000 \
		<"$tmp/$u.pw" 2>&1) || fail "mpchatd useradd $u: $out"
	say "mpchatd useradd $u: $out"
done
declare -A keygen_pid=()
for u in "${USERS[@]}"; do
	"$MPCHAT" keygen --config-dir "$tmp/$u" --bits 2048 >"$tmp/$u.keygen" 2>&1 &
	keygen_pid[$u]=$!
done
for u in "${USERS[@]}"; do
	wait "${keygen_pid[$u]}" || fail "mpchat keygen for $u: $(cat "$tmp/$u.keygen")"
done
for u in "${USERS[@]}"; do
	say "mpchat keygen for $u: $(sed -n 's/^fingerprint //p' "$tmp/$u.keygen")"
done

# The clients read commands from a named pipe each.  All three are started before any
# pipe is opened for writing, so no client inherits another's input.
for u in "${USERS[@]}"; do
	mkfifo "$tmp/$u.in"
	: >"$tmp/$u.out"
	"$MPCHAT" --server "$addr" --server-key "$tmp/state/server.pub" --user "$u" \
		--password-file "$tmp/$u.pw" --config-dir "$tmp/$u" \
		<"$tmp/$u.in" >"$tmp/$u.out" 2>"$tmp/$u.err" &
	client_pid[$u]=$!
done
for u in "${USERS[@]}"; do
	exec {fd}>"$tmp/$u.in"
	in_fd[$u]=$fd
done
say "alice, bob and carol connect; the session:"
echo

# Each is logged in once it answers /status (an empty listing).
for u in "${USERS[@]}"; do
	type_line "$u" /status
	expect "$u" '^status none$'
done

hex='[0-9a-f]{16}'
type_line alice "/init bob carol"
expect bob "^invite $hex alice\$"
sid=$(cut -d ' ' -f 2 <<<"$MATCH")
expect carol "^invite $sid alice\$"

type_line bob "/accept $sid"
type_line carol "/decline $sid"
expect alice "^init $sid ok\$"

type_line alice "/msg $sid lunch at noon?"
expect alice "^sent $sid 1\$"
expect bob "^msg $sid alice lunch at noon\\?\$"
type_line bob "/msg $sid yes, see you there"
expect bob "^sent $sid 2\$"
expect alice "^msg $sid bob yes, see you there\$"

type_line alice "/status $sid"
for who in alice bob carol; do
	expect alice "^status $sid $who $hex "
done
type_line bob /status
expect bob "^status $sid live alice\$"
type_line carol "/status $sid"
expect carol "^error status $sid not a participant\$"

type_line bob "/close $sid"
expect bob "^error close $sid only the creator can close\$"
type_line alice "/close $sid"
expect alice "^closed $sid\$"
expect bob "^closed $sid\$"

# End of input: each client waits for its outstanding replies and exits 0.
for u in "${USERS[@]}"; do
	fd=${in_fd[$u]}
	exec {fd}>&-
done
for u in "${USERS[@]}"; do
	deadline=$((SECONDS + STEP_TIMEOUT))
	while kill -0 "${client_pid[$u]}" 2>/dev/null; do
		[ "$SECONDS" -lt "$deadline" ] || fail "$u's mpchat did not exit within $STEP_TIMEOUT s of the end of its input"
		sleep 0.05
	done
	status=0
	wait "${client_pid[$u]}" || status=$?
	unset "client_pid[$u]"
	[ "$status" -eq 0 ] || fail "$u's mpchat exited with status $status"
done
show_new

# Server blindness: the messages and passwords are nowhere in its log or its state.
for secret in "lunch at noon" "see you there" "demo-alice-password"; do
	if grep -r -q -F -- "$secret" "$tmp/server.log" "$tmp/state"; then
		fail "the server's log or state directory holds \"$secret\""
	fi
done
echo
say "every client exited 0; the server's log and state hold no message text and no password"
say "done in $SECONDS s"
