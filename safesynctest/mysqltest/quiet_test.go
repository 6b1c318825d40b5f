package mysqltest_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

// The embedded engine registers command-line flags and logs through logrus
// and the standard log package. A user's test binary or program that
// imports mysqltest must show none of it: these tests run this package's
// own test binary as such a program.

// quietChildEnv makes TestQuietChild do its work; it is set only when
// TestEngineLogsReachNoOutput runs this test binary as a child.
const quietChildEnv = "MYSQLTEST_QUIET_CHILD"

// childOutput runs this test binary with args and returns its combined
// stdout and stderr.
func childOutput(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run %s %v: %v", os.Args[0], args, err)
	}
	return out.String()
}

func TestNoEngineFlagInHelp(t *testing.T) {
	help := childOutput(t, nil, "-h")
	if !strings.Contains(help, "-test.run") {
		t.Fatalf("-h printed no usage:\n%s", help)
	}
	// Every flag of this binary is the testing package's: the engine's
	// (mysql_auth_server_static_file and its kin) are gone.
	for _, line := range strings.Split(help, "\n") {
		if strings.HasPrefix(line, "  -") && !strings.HasPrefix(line, "  -test.") {
			t.Errorf("-h lists a flag that is not the testing package's: %q", line)
		}
	}
	for _, name := range []string{"mysql_auth_server_static_file", "mysql_auth_server_static_string", "mysql_auth_static_reload_interval", "mysql_clientcert_auth_method"} {
		if flag.Lookup(name) != nil {
			t.Errorf("flag -%s is registered", name)
		}
	}
}

func TestEngineLogsReachNoOutput(t *testing.T) {
	out := childOutput(t, []string{quietChildEnv + "=1"}, "-test.run=^TestQuietChild$", "-test.v", "-test.count=1")
	if !strings.Contains(out, "quiet child: done") {
		t.Fatalf("the child did not finish its queries:\n%s", out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch {
		case strings.HasPrefix(line, "=== RUN"), strings.HasPrefix(line, "--- PASS"),
			strings.HasPrefix(line, "PASS"), strings.HasPrefix(line, "ok "),
			strings.Contains(line, "quiet child:"):
		default:
			t.Errorf("engine output reached the test's output: %q", line)
		}
	}
}

// TestQuietChild is the child of TestEngineLogsReachNoOutput: it makes the
// engine reject queries in every way a test commonly does, and drops a
// connection in the middle of a query; each of these used to log a line.
func TestQuietChild(t *testing.T) {
	if os.Getenv(quietChildEnv) != "1" {
		t.Skip("run by TestEngineLogsReachNoOutput")
	}
	db := mysqltest.New(t)
	ctx := context.Background()
	mustExec(t, db, "CREATE TABLE t (id BIGINT PRIMARY KEY)")
	mustExec(t, db, "INSERT INTO t (id) VALUES (1)")
	expectError := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: the engine accepted it", what)
		}
		t.Logf("quiet child: %s rejected", what)
	}
	_, err := db.ExecContext(ctx, "SELECT * FROM missing")
	expectError("a query on a missing table", err)
	_, err = db.ExecContext(ctx, "SELEC 1")
	expectError("a syntax error", err)
	_, err = db.ExecContext(ctx, "INSERT INTO t (id) VALUES (1)")
	expectError("a duplicate key", err)
	stmt, err := db.PrepareContext(ctx, "SELECT id FROM missing WHERE id = ?")
	if err == nil {
		stmt.Close()
	}
	expectError("a prepared statement on a missing table", err)

	// A second pool without interpolateParams prepares every statement
	// with arguments on the server, as a user's own DSN may.
	s, err := mysqltest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	prepared, err := sql.Open("mysql", strings.TrimSuffix(s.DSN, "?interpolateParams=true"))
	if err != nil {
		t.Fatal(err)
	}
	defer prepared.Close()
	_, err = prepared.ExecContext(ctx, "INSERT INTO missing (id) VALUES (?)", 1)
	expectError("a server-side prepared insert into a missing table", err)

	// A ctx that ends mid-query makes the driver close its connection
	// under the engine.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = prepared.ExecContext(short, "SELECT SLEEP(2)")
	expectError("a query whose ctx ended", err)
	time.Sleep(100 * time.Millisecond) // let the engine notice the closed connection
	fmt.Println("quiet child: done")
}

// A program that configured logrus itself keeps its own output: Start
// silences only the untouched default logger.
func TestStartKeepsALogrusTheProgramConfigured(t *testing.T) {
	std := logrus.StandardLogger()
	old := std.Out
	defer logrus.SetOutput(old)
	var mine bytes.Buffer
	logrus.SetOutput(&mine)
	s, err := mysqltest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if std.Out != &mine {
		t.Fatalf("Start replaced the program's logrus output (%T)", std.Out)
	}
}
