package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/dashboard"
	"github.com/safesync-go/safesync/ops"
	"github.com/safesync-go/safesync/safesynctest"
)

// A service mounts the dashboard under a prefix of its own mux, behind its
// own authentication (here a header check stands in for it).
func Example() {
	redis, err := safesynctest.StartRedis()
	if err != nil {
		panic(err)
	}
	defer redis.Close()
	client, err := redis.Client()
	if err != nil {
		panic(err)
	}
	defer client.Close()
	_, _ = safesync.PublishJSON(context.Background(), client, "orders", map[string]int{"id": 7})

	dash, err := dashboard.New(ops.New(client, ops.Config{}), dashboard.Options{})
	if err != nil {
		panic(err)
	}
	defer dash.Close()

	requireOperator := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Operator") == "" { // your service's own check
				http.Error(w, "forbidden", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	mux := http.NewServeMux()
	mux.Handle("/ops/safesync/", requireOperator(http.StripPrefix("/ops/safesync", dash)))

	for _, operator := range []string{"", "ada"} {
		req := httptest.NewRequest("GET", "/ops/safesync/", nil)
		if operator != "" {
			req.Header.Set("X-Operator", operator)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		fmt.Println(rec.Code, strings.Contains(rec.Body.String(), `href="stream?name=orders"`))
	}
	// Output:
	// 403 false
	// 200 true
}
