package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cluster is six redis-server processes on loopback ports joined by
// redis-cli --cluster create into three masters with a replica each.
type cluster struct {
	dir   string
	ports []int
	procs []*exec.Cmd
	done  []chan struct{}
}

func startCluster() (*cluster, error) {
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s is not installed; install it or pass -cluster", bin)
		}
	}
	dir, err := os.MkdirTemp("", "clusterdrain-")
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir}
	ok := false
	defer func() {
		if !ok {
			c.stop()
		}
	}()
	for len(c.ports) < 6 {
		p := 20000 + rand.IntN(20000)
		if free(p) && free(p+10000) && !contains(c.ports, p) {
			c.ports = append(c.ports, p)
		}
	}
	for _, p := range c.ports {
		ps := strconv.Itoa(p)
		cmd := exec.Command("redis-server", "--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes-"+ps+".conf"), "--cluster-node-timeout", "1000",
			"--port", ps, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", dir, "--daemonize", "no", "--logfile", filepath.Join(dir, "redis-"+ps+".log"))
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		c.procs, c.done = append(c.procs, cmd), append(c.done, done)
	}
	for _, p := range c.ports {
		if err := c.wait(p, "PING", "PONG"); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, p := range c.ports {
		if err := c.wait(p, "CLUSTER INFO", "cluster_state:ok"); err != nil {
			return nil, err
		}
	}
	ok = true
	return c, nil
}

func free(p int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func contains(ps []int, p int) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// wait runs cmd on port until its output contains want, for up to 30 s.
func (c *cluster) wait(port int, cmd, want string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, _ := exec.CommandContext(ctx, "redis-cli", append([]string{"-p", strconv.Itoa(port)}, strings.Fields(cmd)...)...).Output()
		cancel()
		if strings.Contains(string(out), want) {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("node " + strconv.Itoa(port) + ": no " + want + " after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) addrs() []string {
	out := make([]string, len(c.ports))
	for i, p := range c.ports {
		out[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	return out
}

// stop sends SIGTERM to every node, SIGKILL to those still running 5 s
// later, and removes the directory.
func (c *cluster) stop() {
	for _, p := range c.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	for i, p := range c.procs {
		select {
		case <-c.done[i]:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-c.done[i]
		}
	}
	_ = os.RemoveAll(c.dir)
}
