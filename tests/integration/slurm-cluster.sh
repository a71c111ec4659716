#!/bin/sh
# SPDX-License-Identifier: MIT
# A real Slurm cluster on this machine, for `smolvm-lua --slurm`: munged, slurmctld and
# two slurmd, each daemon in a network namespace of its own made here (controller
# "ctl" 198.51.100.1, nodes node1 .11 and node2 .12 on a bridge in ctl; a documentation
# range with no uplink: nothing leaves the namespaces). Each node gets its own smolvm
# state directory through a TaskProlog. The spec runs inside the ctl namespace, where
# the Slurm commands reach slurmctld. Every daemon, namespace, VMM and directory is
# removed at exit, also on failure or interruption.
#
# Usage: slurm-cluster.sh LUA SPEC        (LUA: lua5.4 or smolvm-lua; SPEC: busted spec)
# The spec finds: SLURM_CONF, SMOLVM_SLURM_TMP (the scratch directory),
# SMOLVM_SLURM_NODES ("node1=NS node2=NS": node name = its namespace).
set -eu
interp=$1 spec=$2

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: the Slurm cluster test needs root (namespaces, daemons)" >&2
    exit 77
fi
for tool in munged slurmctld slurmd sbatch squeue scontrol scancel sinfo; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "SKIP: no '$tool': install slurm-wlm, slurmctld, slurmd, slurm-client and munge (scripts/install-deps.sh)" >&2
        exit 77
    fi
done
missing=$(SMOLVM_STATE_DIR=$(mktemp -d /tmp/smolvm-doctor.XXXXXX) "$SMOLVM_LUA" -e '
  for _, c in ipairs(require("smolvm").doctor()) do
    if c.required and not c.ok then print(c.name .. ": " .. c.detail) end
  end
  os.execute("rm -rf " .. os.getenv("SMOLVM_STATE_DIR"))')
if [ -n "$missing" ]; then
    echo "SKIP: this host cannot run sandboxes: $missing" >&2
    exit 77
fi

tmp=$(mktemp -d /tmp/smolvm-slurm.XXXXXX)
chmod 755 "$tmp"
tag=$(basename "$tmp" | sed 's/.*\.//' | tr 'A-Z' 'a-z')
ctl="smsl-ctl-$tag" n1="smsl-n1-$tag" n2="smsl-n2-$tag"
munge_pid=""

cleanup() {
    set +e
    for ns in "$n1" "$n2" "$ctl"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    done
    [ -n "$munge_pid" ] && kill -9 "$munge_pid" 2>/dev/null
    # VMMs (and anything else) started with a path in the scratch directory
    pkill -9 -f -- "$tmp/" 2>/dev/null
    sleep 0.2
    for ns in "$n1" "$n2" "$ctl"; do
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- munge: one key for the cluster, a socket every daemon and command shares
mkdir -p "$tmp/munge" "$tmp/log"
head -c 1024 /dev/urandom >"$tmp/munge/munge.key"
chmod 400 "$tmp/munge/munge.key"
munged --force --key-file="$tmp/munge/munge.key" --socket="$tmp/munge/munge.socket" \
    --pid-file="$tmp/munge/munged.pid" --log-file="$tmp/log/munged.log" \
    --seed-file="$tmp/munge/munged.seed"
munge_pid=$(cat "$tmp/munge/munged.pid")

# ---- namespaces: ctl holds the bridge, each node a veth into it
ip netns add "$ctl"
ip netns add "$n1"
ip netns add "$n2"
ip -n "$ctl" link set lo up
ip -n "$ctl" link add br0 type bridge
ip -n "$ctl" addr add 198.51.100.1/24 dev br0
ip -n "$ctl" link set br0 up
i=11
for ns in "$n1" "$n2"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "v$i"
    ip -n "$ns" link set "v$i" netns "$ctl"
    ip -n "$ctl" link set "v$i" master br0
    ip -n "$ctl" link set "v$i" up
    ip -n "$ns" addr add "198.51.100.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    i=$((i + 1))
done

# ---- slurm.conf: small timeouts so a dead node is noticed in seconds, and a requeued job
# may start again 11 s later (cred_expire + 1; 121 s by default)
mkdir -p "$tmp/ctld" "$tmp/spool/node1" "$tmp/spool/node2" "$tmp/state-node1" "$tmp/state-node2"
cat >"$tmp/taskprolog.sh" <<EOF
#!/bin/sh
# Each node's own smolvm state directory, as on a real cluster's local disk.
echo "export SMOLVM_STATE_DIR=$tmp/state-\$SLURMD_NODENAME"
EOF
chmod 755 "$tmp/taskprolog.sh"
cat >"$tmp/slurm.conf" <<EOF
ClusterName=smolvmtest
SlurmctldHost=$(hostname -s)(198.51.100.1)
MailProg=/bin/true
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/munge/munge.socket,cred_expire=10
StateSaveLocation=$tmp/ctld
SlurmdSpoolDir=$tmp/spool/%n
SlurmctldPidFile=$tmp/ctld/slurmctld.pid
SlurmdPidFile=$tmp/spool/%n/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog=$tmp/taskprolog.sh
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
SlurmdTimeout=10
SlurmctldTimeout=10
MessageTimeout=5
InactiveLimit=0
KillWait=30
MinJobAge=600
JobRequeue=1
NodeName=node1 NodeAddr=198.51.100.11 CPUs=2 RealMemory=1024 State=UNKNOWN
NodeName=node2 NodeAddr=198.51.100.12 CPUs=2 RealMemory=1024 State=UNKNOWN
PartitionName=kvm Nodes=node1,node2 Default=YES MaxTime=30 State=UP
EOF
# No cgroup plugin is used (proctrack/linuxproc, task/none), but slurmd loads one:
# autodetection fails on a hybrid mount (v1 controllers under a tmpfs), so name v1
# there; a pure cgroup2 mount is detected.
if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
    echo "CgroupPlugin=autodetect" >"$tmp/cgroup.conf"
else
    echo "CgroupPlugin=cgroup/v1" >"$tmp/cgroup.conf"
fi
export SLURM_CONF="$tmp/slurm.conf"

ip netns exec "$ctl" slurmctld -D -i -f "$SLURM_CONF" >"$tmp/log/slurmctld.out" 2>&1 &
ip netns exec "$n1" slurmd -D -N node1 -f "$SLURM_CONF" >"$tmp/log/slurmd-node1.out" 2>&1 &
ip netns exec "$n2" slurmd -D -N node2 -f "$SLURM_CONF" >"$tmp/log/slurmd-node2.out" 2>&1 &

# Slurm has no event to wait on for "nodes registered": ask sinfo, within a deadline.
deadline=$(($(date +%s) + 60))
until [ "$(ip netns exec "$ctl" sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle$')" = 2 ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "FAIL: the two slurmd did not register within 60 s" >&2
        ip netns exec "$ctl" sinfo -N 2>&1 >&2 || true
        tail -n 20 "$tmp/log/"*.log "$tmp/log/"*.out >&2 || true
        exit 1
    fi
    sleep 0.5
done
ip netns exec "$ctl" sinfo -N

# The nodes' scratch and job logs (SMOLVM_SLURM_DIR, /tmp on a real cluster) inside
# the scratch directory, so they go with it.
mkdir -p "$tmp/node-scratch"
export SMOLVM_SLURM_TMP="$tmp" SMOLVM_SLURM_NODES="node1=$n1 node2=$n2"
export SMOLVM_SLURM_DIR="$tmp/node-scratch"
status=0
SMOLVM_TEST_NETNS=1 ip netns exec "$ctl" "$interp" /usr/bin/busted --output=plainTerminal "$spec" || status=$?
if [ "$status" -ne 0 ]; then
    echo "---- slurm logs (last lines) ----" >&2
    tail -n 30 "$tmp/log/"*.log >&2 || true
fi
exit $status
