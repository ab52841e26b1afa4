# Shared by benches/relay.sh and benches/scale.sh (sourced; they set $work
# and the ports).

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }

# Messages the sink has counted so far (smtp-sink -c and bench-sink both print mesg=N).
sink_count() { tr '\r' '\n' < "$work/sink.out" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1; }
stop_sink() { kill "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null || true; sink_pid=; }

# The shipped policy in $work/policies with normal mail requiring LEVEL:
# the shipped rules stay in force (every message is parsed and classified
# as in production); only what normal mail requires changes.
policy_requiring() {
  rm -rf "$work/policies"
  mkdir -p "$work/policies"
  sed "s/^required = \"encrypted\"/required = \"$1\"/" policies/default.toml > "$work/policies/default.toml"
  grep -q "^required = \"$1\"" "$work/policies/default.toml"
}
