// Package mysqltest runs an in-process, in-memory MySQL-compatible server
// (go-mysql-server) for tests and examples that need a database but no
// service, reached through go-sql-driver/mysql like a real server.
//
// It is a module of its own, so that programs and libraries that import
// safesync never see the engine (and its many dependencies) in their module
// graph; only test code that imports this package pays for it. The first
// build compiles the engine, which takes a few minutes on a small machine;
// later builds come from the build cache.
//
// The engine supports transactions, rollback, duplicate-key error 1062 and
// GET_LOCK, which is enough to run examples and to unit-test handlers. It
// does NOT isolate concurrent transactions, and FOR UPDATE does not block,
// so Open returns a pool of one connection: transactions run one at a time.
// Test lock and optimistic-concurrency behaviour under real concurrency
// against MySQL or MariaDB.
package mysqltest

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"

	sqle "github.com/dolthub/go-mysql-server"
	"github.com/dolthub/go-mysql-server/memory"
	"github.com/dolthub/go-mysql-server/server"
	gmssql "github.com/dolthub/go-mysql-server/sql"
	_ "github.com/go-sql-driver/mysql" // the driver safesync uses against real servers
	"github.com/sirupsen/logrus"
)

// Database is the database name of every Server.
const Database = "test"

// engineFlags are the flags the engine's MySQL protocol package registers on
// the process-wide flag set when it is imported. They configure nothing a
// test uses; init removes them so that they appear in no program's -h.
var engineFlags = map[string]bool{
	"mysql_auth_server_static_file":     true,
	"mysql_auth_server_static_string":   true,
	"mysql_auth_static_reload_interval": true,
	"mysql_clientcert_auth_method":      true,
}

func init() {
	// The engine's packages have registered their flags by now (they are
	// initialised before this one); rebuild the process's flag set without
	// them. Flags registered by anything else keep their values and
	// variables.
	old := flag.CommandLine
	fresh := flag.NewFlagSet(old.Name(), old.ErrorHandling())
	fresh.SetOutput(old.Output())
	fresh.Usage = old.Usage
	old.VisitAll(func(f *flag.Flag) {
		if !engineFlags[f.Name] {
			fresh.Var(f.Value, f.Name, f.Usage)
		}
	})
	flag.CommandLine = fresh
}

// quietEngineLog silences the process-wide logrus logger that the engine
// logs every connection and rejected query to, unless the program has
// configured it itself (its level or output changed from logrus' defaults).
func quietEngineLog() {
	std := logrus.StandardLogger()
	if std.GetLevel() == logrus.InfoLevel && std.Out == os.Stderr {
		logrus.SetOutput(io.Discard)
	}
}

// Server is a running in-memory MySQL-compatible server on a loopback
// port.
type Server struct {
	// DSN reaches the server with go-sql-driver/mysql.
	DSN string

	srv       *server.Server
	done      chan error
	closeOnce sync.Once
	closeErr  error
}

// Start starts a Server on 127.0.0.1 with an empty database named Database.
// Close stops it.
//
// The engine logs through the process-wide logrus logger. Unless the
// program configured that logger (changed its level or output), Start
// discards its output, so that no engine log line reaches test output.
func Start() (*Server, error) {
	quietEngineLog()
	db := memory.NewDatabase(Database)
	db.BaseDatabase.EnablePrimaryKeyIndexes()
	provider := memory.NewDBProvider(db)
	engine := sqle.NewDefault(provider)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("mysqltest: listen: %w", err)
	}
	srv, err := server.NewServer(server.Config{Protocol: "tcp", Listener: ln}, engine, gmssql.NewContext, memory.NewSessionBuilder(provider), nil)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("mysqltest: start: %w", err)
	}
	s := &Server{
		// interpolateParams: one round trip per statement instead of
		// three (prepare, execute, close), which the engine parses slowly.
		DSN:  fmt.Sprintf("root@tcp(%s)/%s?interpolateParams=true", ln.Addr(), Database),
		srv:  srv,
		done: make(chan error, 1),
	}
	go func() { s.done <- srv.Start() }()
	return s, nil
}

// Open returns a pool on the server limited to one connection, so that
// transactions never overlap (see the package documentation). The caller
// closes it.
func (s *Server) Open() (*sql.DB, error) {
	db, err := sql.Open("mysql", s.DSN)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if err := db.PingContext(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("mysqltest: the server does not answer: %w", err)
	}
	return db, nil
}

// Close stops the server and waits for it to exit. It is safe to call more
// than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.srv.Close()
		if err := <-s.done; err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = errors.Join(s.closeErr, err)
		}
	})
	return s.closeErr
}

// New starts a Server for one test and returns a one-connection pool on
// it; both are closed by tb.Cleanup.
func New(tb testing.TB) *sql.DB {
	tb.Helper()
	s, err := Start()
	if err != nil {
		tb.Fatal(err)
	}
	db, err := s.Open()
	if err != nil {
		s.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		db.Close()
		if err := s.Close(); err != nil {
			tb.Errorf("mysqltest: stop: %v", err)
		}
	})
	return db
}
