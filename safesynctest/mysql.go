package safesynctest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"

	sqle "github.com/dolthub/go-mysql-server"
	"github.com/dolthub/go-mysql-server/memory"
	"github.com/dolthub/go-mysql-server/server"
	gmssql "github.com/dolthub/go-mysql-server/sql"
	_ "github.com/go-sql-driver/mysql" // the driver safesync uses against real servers
	"github.com/sirupsen/logrus"
)

// EmbeddedDatabase is the database name of every EmbeddedMySQL.
const EmbeddedDatabase = "test"

// EmbeddedMySQL is an in-process, in-memory MySQL-compatible server
// (go-mysql-server) listening on a loopback port, reached through the same
// driver (go-sql-driver/mysql) as a real server.
//
// It supports transactions, rollback, duplicate-key error 1062 and GET_LOCK,
// which is enough to run examples and to unit-test handlers. It does NOT
// isolate concurrent transactions and FOR UPDATE does not block, so Open
// returns a pool of one connection: transactions run one at a time. Lock and
// optimistic-concurrency behaviour under real concurrency must be tested
// against MySQL or MariaDB.
//
// Starting one lowers the level of the process-wide logrus logger, which
// go-mysql-server logs every connection and query to, to errors only.
type EmbeddedMySQL struct {
	// DSN reaches the server with go-sql-driver/mysql.
	DSN string

	srv       *server.Server
	done      chan error
	closeOnce sync.Once
	closeErr  error
}

// StartMySQL starts an EmbeddedMySQL on 127.0.0.1 with an empty database
// named EmbeddedDatabase. Close stops it.
func StartMySQL() (*EmbeddedMySQL, error) {
	logrus.SetLevel(logrus.ErrorLevel)
	db := memory.NewDatabase(EmbeddedDatabase)
	db.BaseDatabase.EnablePrimaryKeyIndexes()
	provider := memory.NewDBProvider(db)
	engine := sqle.NewDefault(provider)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("safesynctest: listen: %w", err)
	}
	srv, err := server.NewServer(server.Config{Protocol: "tcp", Listener: ln}, engine, gmssql.NewContext, memory.NewSessionBuilder(provider), nil)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("safesynctest: start embedded MySQL: %w", err)
	}
	m := &EmbeddedMySQL{
		// interpolateParams: one round trip per statement instead of
		// three (prepare, execute, close), which the engine parses slowly.
		DSN:  fmt.Sprintf("root@tcp(%s)/%s?interpolateParams=true", ln.Addr(), EmbeddedDatabase),
		srv:  srv,
		done: make(chan error, 1),
	}
	go func() { m.done <- srv.Start() }()
	return m, nil
}

// Open returns a pool on the server limited to one connection, so that
// transactions never overlap (see EmbeddedMySQL). The caller closes it.
func (m *EmbeddedMySQL) Open() (*sql.DB, error) {
	db, err := sql.Open("mysql", m.DSN)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if err := db.PingContext(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("safesynctest: embedded MySQL does not answer: %w", err)
	}
	return db, nil
}

// Close stops the server and waits for it to exit. It is safe to call more
// than once.
func (m *EmbeddedMySQL) Close() error {
	m.closeOnce.Do(func() {
		m.closeErr = m.srv.Close()
		if err := <-m.done; err != nil && !errors.Is(err, net.ErrClosed) {
			m.closeErr = errors.Join(m.closeErr, err)
		}
	})
	return m.closeErr
}

// NewMySQL starts an EmbeddedMySQL for one test and returns a one-connection
// pool on it; both are closed by tb.Cleanup.
func NewMySQL(tb testing.TB) *sql.DB {
	tb.Helper()
	m, err := StartMySQL()
	if err != nil {
		tb.Fatal(err)
	}
	db, err := m.Open()
	if err != nil {
		m.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		db.Close()
		if err := m.Close(); err != nil {
			tb.Errorf("safesynctest: stop embedded MySQL: %v", err)
		}
	})
	return db
}
