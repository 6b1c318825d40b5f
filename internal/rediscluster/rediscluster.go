// Package rediscluster starts and stops a local Redis Cluster (three
// masters, one replica each, every node a redis-server process on a free
// loopback port) for the integration tests and the cluster benchmark, and
// answers what they need to know of it: its masters, the master of a key,
// and killing a node.
package rediscluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/safesync-go/safesync"
)

// Missing reports why a cluster cannot be started here, or "".
func Missing() string {
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is not installed"
		}
	}
	return ""
}

// Cluster is a Redis Cluster of three masters and three replicas,
// each a redis-server process on a loopback port, with its files in a
// temporary directory. It is started by Start and stopped by Stop.
type Cluster struct {
	dir   string
	ports []int

	mu    sync.Mutex
	procs map[int]*node // by port; a killed node is removed
}

// node is one redis-server process.
type node struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// size is the number of nodes: three masters, one replica each.
const size = 6

// Waits are bounded generously: on a loaded machine (a parallel build, other
// tests, two cores shared by several servers) a node can take seconds to
// start and the gossip seconds more to converge. Each wait returns as soon
// as its condition holds, so a quiet machine pays nothing for the margin.
const (
	// startTimeout bounds each node's first PING and redis-cli --cluster
	// create.
	startTimeout = 60 * time.Second
	// healthyTimeout bounds the wait for a converged, healthy cluster.
	healthyTimeout = 90 * time.Second
	// cliTimeout bounds one redis-cli call (a process start and one
	// command).
	cliTimeout = 15 * time.Second
)

// Start starts six nodes, joins them with redis-cli --cluster create, and
// waits until the cluster is healthy and converged (see WaitHealthy).
func Start() (*Cluster, error) {
	dir, err := os.MkdirTemp("", "safesync-cluster-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, procs: map[int]*node{}}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	if c.ports, err = freePorts(size); err != nil {
		return nil, err
	}
	for _, p := range c.ports {
		if err := c.startNode(p); err != nil {
			return nil, err
		}
	}
	for _, p := range c.ports {
		if err := c.waitFor(p, startTimeout, "PING", func(out string) bool { return out == "PONG" }, "ping"); err != nil {
			return nil, err
		}
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.WaitHealthy(healthyTimeout); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// freePorts picks n loopback ports whose cluster bus ports (port + 10000)
// are free too.
func freePorts(n int) ([]int, error) {
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, errors.New("no free pair of loopback ports found")
		}
		p := 20000 + rand.IntN(20000)
		if !portFree(p) || !portFree(p+10000) {
			continue
		}
		dup := false
		for _, q := range ports {
			dup = dup || q == p
		}
		if !dup {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// startNode starts the redis-server of port, or restarts it from its
// nodes file after it was killed.
func (c *Cluster) startNode(port int) error {
	ps := strconv.Itoa(port)
	cmd := exec.Command("redis-server",
		"--cluster-enabled", "yes",
		"--cluster-config-file", filepath.Join(c.dir, "nodes-"+ps+".conf"),
		"--cluster-node-timeout", "1000",
		"--repl-diskless-sync-delay", "0", // a replica syncs at once, not 5 s later
		"--port", ps, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no",
		"--dir", c.dir, "--daemonize", "no",
		"--logfile", filepath.Join(c.dir, "redis-"+ps+".log"))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server on %d: %w", port, err)
	}
	n := &node{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(n.done)
	}()
	c.mu.Lock()
	c.procs[port] = n
	c.mu.Unlock()
	return nil
}

// Addrs returns the nodes' host:port addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.ports))
	for i, p := range c.ports {
		out[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	return out
}

// CLI runs one redis-cli command against port and returns its output,
// trimmed.
func (c *Cluster) CLI(port int, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	full := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}, args...)
	out, err := exec.CommandContext(ctx, "redis-cli", full...).Output()
	return strings.TrimSpace(string(out)), err
}

// waitFor runs cmd against port until ok accepts the output, or fails
// after timeout naming what it waited for.
func (c *Cluster) waitFor(port int, timeout time.Duration, cmd string, ok func(string) bool, what string) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		out, err := c.CLI(port, strings.Fields(cmd)...)
		if err == nil && ok(out) {
			return nil
		}
		last = out
		if err != nil {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %d: no %s within %v; last answer: %s\n%s", port, what, timeout, last, c.logTail(port))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitHealthy waits, up to timeout in all, until the live nodes form a
// converged, healthy cluster: every node reports cluster_state:ok with all
// 16384 slots served, every replica's link to its master is up, and every
// node names the same master for every slot. A node that reports ok alone
// may still route a slot to another master than its peers for a moment
// after a create or a failover; clients that learn the topology from it
// would then be redirected, or time out on a loaded machine.
func (c *Cluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	left := func() time.Duration { return max(time.Until(deadline), time.Second) }
	for _, p := range c.LivePorts() {
		if err := c.waitFor(p, left(), "CLUSTER INFO", func(out string) bool {
			return strings.Contains(out, "cluster_state:ok") && strings.Contains(out, "cluster_slots_ok:16384")
		}, "cluster_state:ok with 16384 slots ok"); err != nil {
			return err
		}
		if err := c.waitFor(p, left(), "INFO replication", func(out string) bool {
			return strings.Contains(out, "role:master") || strings.Contains(out, "master_link_status:up")
		}, "replication link"); err != nil {
			return err
		}
	}
	var last string
	for {
		views := map[string][]int{}
		for _, p := range c.LivePorts() {
			v, err := c.slotOwners(p)
			if err != nil {
				v = "error: " + err.Error()
			}
			views[v] = append(views[v], p)
		}
		if len(views) == 1 {
			for v := range views {
				if !strings.HasPrefix(v, "error: ") {
					return nil
				}
			}
		}
		last = fmt.Sprint(views)
		if time.Now().After(deadline) {
			return fmt.Errorf("the nodes did not agree on the masters of the slots within %v; views (view: nodes): %s", timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// slotOwners returns port's view of which master serves which slots, as
// "lo-hi:port" ranges in slot order, for comparison between nodes.
func (c *Cluster) slotOwners(port int) (string, error) {
	out, err := c.CLI(port, "CLUSTER", "NODES")
	if err != nil {
		return "", err
	}
	type owned struct{ lo, hi, port int }
	var ranges []owned
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 9 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		_, ps, _ := net.SplitHostPort(addr)
		mp, err := strconv.Atoi(ps)
		if err != nil {
			return "", fmt.Errorf("node %d: CLUSTER NODES address %q", port, f[1])
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated
			}
			lo, hi, found := strings.Cut(r, "-")
			if !found {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil {
				return "", fmt.Errorf("node %d: CLUSTER NODES slot range %q", port, r)
			}
			ranges = append(ranges, owned{a, b, mp})
		}
	}
	slices.SortFunc(ranges, func(x, y owned) int { return x.lo - y.lo })
	var b strings.Builder
	for _, r := range ranges {
		fmt.Fprintf(&b, "%d-%d:%d ", r.lo, r.hi, r.port)
	}
	return b.String(), nil
}

// LivePorts returns the ports of the nodes not killed.
func (c *Cluster) LivePorts() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for _, p := range c.ports {
		if _, ok := c.procs[p]; ok {
			out = append(out, p)
		}
	}
	return out
}

// Masters returns the ports of the live nodes whose role is master.
func (c *Cluster) Masters() ([]int, error) {
	var out []int
	for _, p := range c.LivePorts() {
		role, err := c.CLI(p, "ROLE")
		if err != nil {
			return nil, fmt.Errorf("ROLE on %d: %w", p, err)
		}
		if strings.HasPrefix(role, "master") {
			out = append(out, p)
		}
	}
	return out, nil
}

// MasterOf returns the port of the master serving key's slot, as the
// first live node that answers sees it.
func (c *Cluster) MasterOf(key string) (int, error) {
	var errs []error
	for _, p := range c.LivePorts() {
		m, err := c.MasterOfSlot(p, int(safesync.KeySlot(key)))
		if err == nil {
			return m, nil
		}
		errs = append(errs, err)
	}
	return 0, errors.Join(append(errs, errors.New("no live node knows the master of "+key))...)
}

// MasterOfSlot reads CLUSTER NODES on port and returns the port of the
// connected master serving slot.
func (c *Cluster) MasterOfSlot(port, slot int) (int, error) {
	out, err := c.CLI(port, "CLUSTER", "NODES")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 9 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
			continue
		}
		for _, r := range f[8:] {
			lo, hi, found := strings.Cut(r, "-")
			if !found {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && a <= slot && slot <= b {
				addr, _, _ := strings.Cut(f[1], "@")
				_, ps, _ := net.SplitHostPort(addr)
				return strconv.Atoi(ps)
			}
		}
	}
	return 0, fmt.Errorf("no master serves slot %d in CLUSTER NODES of %d", slot, port)
}

// Kill sends sig to the node of port and waits (up to 10 s) for it to exit.
func (c *Cluster) Kill(port int, sig syscall.Signal) error {
	c.mu.Lock()
	n, ok := c.procs[port]
	delete(c.procs, port)
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("node %d is not running", port)
	}
	if err := n.cmd.Process.Signal(sig); err != nil {
		return err
	}
	select {
	case <-n.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
		return fmt.Errorf("node %d did not exit within 10s of %v", port, sig)
	}
}

// Stop ends every node (SIGTERM, then SIGKILL after 5 s) and removes the
// directory.
func (c *Cluster) Stop() {
	c.mu.Lock()
	procs := c.procs
	c.procs = map[int]*node{}
	c.mu.Unlock()
	for _, n := range procs {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
	}
	for port, n := range procs {
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
			fmt.Fprintf(os.Stderr, "rediscluster: node %d ignored SIGTERM; killing it\n", port)
			_ = n.cmd.Process.Kill()
			<-n.done
		}
	}
	_ = os.RemoveAll(c.dir)
}

// logTail returns the last lines of a node's log, for failure messages.
func (c *Cluster) logTail(port int) string {
	b, err := os.ReadFile(filepath.Join(c.dir, "redis-"+strconv.Itoa(port)+".log"))
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
