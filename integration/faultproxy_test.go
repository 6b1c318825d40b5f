package integration

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// mysqlProxy is a loopback TCP proxy in front of MySQL that can lose a
// server's answer on purpose: after it forwards a client packet that
// matches, it swallows the server's reply and closes the client's
// connection. The server has done the work; the client never hears.
type mysqlProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	match func(payload []byte) bool // one-shot; nil when disarmed
	conns map[net.Conn]bool
	cuts  atomic.Int64
}

func startMySQLProxy(tb testing.TB, target string) *mysqlProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &mysqlProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	tb.Cleanup(p.close)
	return p
}

func (p *mysqlProxy) addr() string { return p.ln.Addr().String() }

// loseReplyTo arms the proxy: the next client packet whose payload matches
// is forwarded, and the reply to it is lost with the connection.
func (p *mysqlProxy) loseReplyTo(match func(payload []byte) bool) {
	p.mu.Lock()
	p.match = match
	p.mu.Unlock()
}

// isQuery matches a COM_QUERY packet whose text is exactly sql.
func isQuery(sql string) func([]byte) bool {
	return func(payload []byte) bool {
		return len(payload) > 0 && payload[0] == 0x03 && bytes.EqualFold(payload[1:], []byte(sql))
	}
}

func (p *mysqlProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *mysqlProxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

func (p *mysqlProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.track(client, true)
		p.track(server, true)
		var cut atomic.Bool
		closeBoth := func() {
			client.Close()
			server.Close()
			p.track(client, false)
			p.track(server, false)
		}
		// server -> client: forward, unless the reply is to be lost.
		go func() {
			defer closeBoth()
			buf := make([]byte, 32<<10)
			for {
				n, err := server.Read(buf)
				if n > 0 {
					if cut.Load() {
						p.cuts.Add(1)
						return
					}
					if _, werr := client.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		// client -> server: forward packet by packet, watching for a match.
		go func() {
			defer closeBoth()
			var hdr [4]byte
			for {
				if _, err := io.ReadFull(client, hdr[:]); err != nil {
					return
				}
				size := int(binary.LittleEndian.Uint32(append(hdr[:3:3], 0)))
				payload := make([]byte, size)
				if _, err := io.ReadFull(client, payload); err != nil {
					return
				}
				p.mu.Lock()
				if p.match != nil && p.match(payload) {
					p.match = nil
					cut.Store(true)
				}
				p.mu.Unlock()
				if _, err := server.Write(append(hdr[:], payload...)); err != nil {
					return
				}
			}
		}()
	}
}
