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

# private_apt DIR SOURCE_LINE...: an apt configuration of its own under DIR
# (lists, archives, cache), with these sources and the machine's dpkg status,
# so that `apt-get download` and `apt-get source` work without touching the
# system's apt state. Exports APT_CONFIG. The mirror snapshot can be older
# than the clock: Valid-Until is not checked.
private_apt() {
  local dir=$1; shift
  mkdir -p "$dir"/{lists/partial,archives/partial,cache,etc/preferences.d}
  printf '%s\n' "$@" >"$dir/etc/sources.list"
  cat >"$dir/etc/apt.conf" <<CONF
Dir::Etc::SourceList "$dir/etc/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::Etc::PreferencesParts "$dir/etc/preferences.d";
Dir::State::Lists "$dir/lists";
Dir::Cache "$dir/cache";
Dir::Cache::Archives "$dir/archives";
Dir::State::Status "/var/lib/dpkg/status";
Acquire::Check-Valid-Until "false";
APT::Architecture "amd64";
APT::Sandbox::User "root";
CONF
  export APT_CONFIG=$dir/etc/apt.conf
}
