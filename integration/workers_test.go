package integration

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Worker processes: tests that need several OS processes re-execute the
// test binary with SAFESYNC_WORKER naming a function registered in
// workers. TestMain runs that function instead of the tests; its result is
// written to stdout as JSON for the parent to read.
const (
	envWorker     = "SAFESYNC_WORKER"
	envWorkerArgs = "SAFESYNC_WORKER_ARGS"
)

// workerFunc runs in a child process. args is the JSON the parent passed;
// the result is encoded to stdout. ctx ends on SIGTERM or SIGINT.
type workerFunc func(ctx context.Context, args json.RawMessage) (any, error)

// workers is filled by init functions of the test files that use them.
var workers = map[string]workerFunc{}

func runWorker(name string) int {
	fn, ok := workers[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "integration: no worker named %q\n", name)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	out, err := fn(ctx, json.RawMessage(os.Getenv(envWorkerArgs)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: worker %s: %v\n", name, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "integration: worker %s: encode result: %v\n", name, err)
		return 1
	}
	return 0
}

// workerProc is a running child process.
type workerProc struct {
	name   string
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan error
}

// startWorker starts the registered worker name in a new process with args
// encoded as JSON. The child sees the same services as this process. It is
// killed if still running when the test ends.
func startWorker(tb testing.TB, name string, args any) *workerProc {
	tb.Helper()
	raw, err := json.Marshal(args)
	if err != nil {
		tb.Fatal(err)
	}
	w := &workerProc{name: name, done: make(chan error, 1)}
	w.cmd = exec.Command(os.Args[0], "-test.run=^$")
	w.cmd.Env = append(os.Environ(),
		envWorker+"="+name,
		envWorkerArgs+"="+string(raw),
		envMySQLDSN+"="+services.mysqlDSN,
		envRedisAddr+"="+services.redisAddr,
	)
	w.cmd.Stdout = &w.stdout
	w.cmd.Stderr = &w.stderr
	if err := w.cmd.Start(); err != nil {
		tb.Fatalf("start worker %s: %v", name, err)
	}
	go func() { w.done <- w.cmd.Wait() }()
	tb.Cleanup(func() {
		select {
		case <-w.done:
		default:
			_ = w.cmd.Process.Kill()
			<-w.done
		}
	})
	return w
}

// wait waits up to timeout for the worker to exit, fails the test if it
// failed, and decodes its result into out (when out is not nil).
func (w *workerProc) wait(tb testing.TB, timeout time.Duration, out any) {
	tb.Helper()
	select {
	case err := <-w.done:
		w.done <- err // keep it readable for the cleanup
		if err != nil {
			tb.Fatalf("worker %s (pid %d) failed: %v\nstderr:\n%s", w.name, w.cmd.Process.Pid, err, w.stderr.String())
		}
	case <-time.After(timeout):
		_ = w.cmd.Process.Kill()
		tb.Fatalf("worker %s (pid %d) still running after %v\nstderr:\n%s", w.name, w.cmd.Process.Pid, timeout, w.stderr.String())
	}
	if out != nil {
		if err := json.Unmarshal(w.stdout.Bytes(), out); err != nil {
			tb.Fatalf("worker %s result %q: %v", w.name, w.stdout.String(), err)
		}
	}
}

// workerServices connects a worker process to the MySQL and Redis its
// parent passed in the environment. The caller closes both.
func workerServices() (*sql.DB, rueidis.Client, error) {
	db, err := sql.Open("mysql", os.Getenv(envMySQLDSN))
	if err != nil {
		return nil, nil, err
	}
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{os.Getenv(envRedisAddr)}, DisableCache: true})
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, rdb, nil
}
