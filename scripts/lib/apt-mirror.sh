# Sourced by scripts that write a private apt configuration. The Debian
# mirror is the one this machine's own apt sources use: no script names one.
# debian_mirror prints the URI that serves the main archive (not -security).
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    # deb822 stanzas: the URIs of a stanza whose Suites has a release without
    # a -security suffix.
    uri=$(awk '
      /^[[:space:]]*$/ { if (u != "" && main) { print u; exit } u = ""; main = 0; next }
      /^URIs:/ { u = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-security$/) main = 1 }
      END { if (u != "" && main) print u }' "$f" | head -1)
    [ -n "$uri" ] && { echo "${uri%/}"; return 0; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk '$1 == "deb" && $0 !~ /-security/ {
      for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")
    [ -n "$uri" ] && { echo "${uri%/}"; return 0; }
  done
  echo "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; add one (apt's own sources) and re-run" >&2
  return 1
}
