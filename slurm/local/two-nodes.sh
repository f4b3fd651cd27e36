#!/usr/bin/env bash
# A real two-node Slurm cluster on one machine (run through `start-cluster.sh --nodes 2 [--stop]`; needs root).
#
# The nodes are network namespaces joined by the bridge br-sam (10.77.0.0/24; the host keeps 10.77.0.1):
#   samctl 10.77.0.10  slurmctld, hostname samctl
#   sam1   10.77.0.11  slurmd, hostname node1        sam2   10.77.0.12  slurmd, hostname node2
# Each daemon runs in its namespace under its own hostname (nsenter --net + unshare --uts; not `ip netns exec`,
# which remounts /sys and leaves slurmd without a cgroup filesystem). Tasks of a job on node2 run in node2's
# namespace, so gloo traffic between the nodes crosses the bridge as it would cross a network. CPUs, memory and
# the filesystem stay shared. Nothing listens in the host's namespace, so this cluster coexists with the one-node
# cluster of start-cluster.sh (its own slurm.conf, state, logs and pid files): use it with
#   SLURM_CONF=/etc/slurm-sam2/slurm.conf sinfo        (sbatch, squeue, scontrol alike)
# --stop stops the daemons by their pid files (munged too when this script started it), deletes the namespaces
# and the bridge, and removes the /etc/hosts lines. Nothing is ever killed by name.
set -euo pipefail

CONF_DIR=/etc/slurm-sam2
CONF=$CONF_DIR/slurm.conf
STATE=/var/spool/slurm-sam2
RUN=/run/slurm-sam2
LOGS=/var/log/slurm-sam2
BRIDGE=br-sam
HOSTS_TAG="# sa-megatron two-node cluster"
export SLURM_CONF=$CONF

in_ns() {  # in_ns NAMESPACE HOSTNAME COMMAND...: run a daemon in the namespace under its own hostname
    local ns=$1 host=$2; shift 2
    nsenter --net="/var/run/netns/$ns" unshare --uts sh -c 'hostname "$0"; exec "$@"' "$host" "$@"
}

stop_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

stop_cluster() {
    stop_pid "$RUN/slurmd-node1.pid"
    stop_pid "$RUN/slurmd-node2.pid"
    stop_pid "$RUN/slurmctld.pid"
    [ -f "$RUN/munged-started-here" ] && stop_pid /run/munge/munged.pid
    rm -f "$RUN/munged-started-here"
    for ns in sam1 sam2 samctl; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del "$BRIDGE" 2>/dev/null || true
    if grep -q "$HOSTS_TAG" /etc/hosts; then
        # /etc/hosts may be a bind mount: rewrite it in place rather than replacing the file
        grep -v "$HOSTS_TAG" /etc/hosts > /etc/hosts.sam2 || true
        cat /etc/hosts.sam2 > /etc/hosts && rm -f /etc/hosts.sam2
    fi
}

if [ "${1:-}" = "--stop" ]; then
    stop_cluster
    exit 0
fi

alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
nodes_idle() { [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated)$')" = 2 ]; }

if alive "$RUN/slurmctld.pid" && alive "$RUN/slurmd-node1.pid" && alive "$RUN/slurmd-node2.pid" && nodes_idle; then
    exit 0
fi
stop_cluster  # a half-started or stale cluster: start over

# The network: a bridge in the host namespace, one veth pair per namespace (its end inside is eth0).
ip link add "$BRIDGE" type bridge
ip addr add 10.77.0.1/24 dev "$BRIDGE"
ip link set "$BRIDGE" up
for entry in samctl:10 sam1:11 sam2:12; do
    ns=${entry%%:*} host=${entry##*:}
    ip netns add "$ns"
    ip link add "v-$ns" type veth peer name eth0 netns "$ns"
    ip link set "v-$ns" master "$BRIDGE" up
    ip netns exec "$ns" ip addr add "10.77.0.$host/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
    ip netns exec "$ns" ip link set lo up
done
printf '%s\n' "10.77.0.10 samctl $HOSTS_TAG" "10.77.0.11 node1 $HOSTS_TAG" "10.77.0.12 node2 $HOSTS_TAG" >> /etc/hosts

CPUS=$(slurmd -C | head -n 1 | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/node1" "$STATE/node2" "$RUN" "$LOGS" /run/munge
cat > "$CONF" <<EOF
ClusterName=sa-megatron-2node
SlurmctldHost=samctl(10.77.0.10)
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
KillWait=10
# A requeued job waits cred_expire seconds before it may start again (default 120), and the scheduler looks at
# pending jobs every sched_interval (default 60): short here, so a requeue restarts within seconds.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=node1 NodeAddr=10.77.0.11 CPUs=$CPUS State=UNKNOWN
NodeName=node2 NodeAddr=10.77.0.12 CPUs=$CPUS State=UNKNOWN
PartitionName=two Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
    touch "$RUN/munged-started-here"
fi
# -c: a clean start (no jobs from an earlier cluster of the same name); -i: ignore stale state.
in_ns samctl samctl slurmctld -c -i
in_ns sam1 node1 slurmd -N node1
in_ns sam2 node2 slurmd -N node2

for _ in $(seq 60); do
    if nodes_idle; then exit 0; fi
    sleep 1
done
echo "start-cluster: the two Slurm nodes did not come up; see $LOGS/" >&2
sinfo -N >&2 || true
exit 1
