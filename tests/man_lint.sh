#!/bin/sh
# Lints the manual pages with mandoc at every level, style included (-Wall), and
# fails on any message at all, so a page stays clean rather than "mostly clean".
#
# One message is checked here instead of by mandoc: "referenced manual not found"
# for a cross reference (.Xr) to another page of this project.  mandoc looks such
# pages up among the installed manuals only, so its answer would depend on the
# machine; this script accepts the reference when man/NAME.SECTION exists in the
# tree, and fails otherwise.  References to other projects' pages are not used in
# the pages, because whether they are installed differs from machine to machine.
#
# Usage: sh tests/man_lint.sh [page...]   (default: every man/*.[0-9])
# Needs mandoc (Debian package "mandoc").
set -eu

cd "$(dirname "$0")/.."

if ! command -v mandoc >/dev/null 2>&1; then
	echo "man_lint: mandoc is not installed; install it (Debian: apt-get install mandoc) and run again" >&2
	exit 1
fi

if [ "$#" -eq 0 ]; then
	set -- man/*.[0-9]
fi

status=0
for page in "$@"; do
	if [ ! -f "$page" ]; then
		echo "man_lint: $page: no such file" >&2
		status=1
		continue
	fi
	rc=0
	out=$(mandoc -Tlint -Wall "$page" 2>&1) || rc=$?
	# mandoc exits 1 when its only messages are style ones (including the
	# cross-reference one filtered below) and 2 or more on warnings and worse.
	findings=$(printf '%s\n' "$out" | while IFS= read -r line; do
		[ -n "$line" ] || continue
		xr=$(printf '%s\n' "$line" |
			sed -n 's/.*STYLE: referenced manual not found: Xr \([A-Za-z0-9_.-]*\) \([0-9]\)\( (.*)\)\{0,1\}$/\1.\2/p')
		if [ -n "$xr" ] && [ -f "man/$xr" ]; then
			continue
		fi
		printf '%s\n' "$line"
	done)
	if [ "$rc" -gt 1 ] || [ -n "$findings" ]; then
		[ -z "$findings" ] || printf '%s\n' "$findings" >&2
		echo "man_lint: $page: not clean under mandoc -Tlint -Wall (mandoc exit status $rc)" >&2
		status=1
	else
		echo "man_lint: $page: clean"
	fi
done
exit "$status"
