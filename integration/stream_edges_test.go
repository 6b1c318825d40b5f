package integration

// Regression tests for the stream defects of issue 11 that need a real
// Redis: refusals by ACL, acknowledgements that fail.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// aclClient creates a Redis ACL user of the test's own, allowed every
// command except those in denied (e.g. "-xack"), and returns a client
// logged in as that user. The user is deleted when the test ends.
func aclClient(t *testing.T, denied ...string) rueidis.Client {
	t.Helper()
	admin := openRedis(t)
	user := uniqueName(t, "acl")
	rules := append([]string{"reset", "on", "nopass", "~*", "&*", "+@all"}, denied...)
	if err := admin.Do(context.Background(), admin.B().AclSetuser().Username(user).Rule(rules...).Build()).Error(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	t.Cleanup(func() {
		_ = admin.Do(context.Background(), admin.B().AclDeluser().Username(user).Build()).Error()
	})
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{redisAddr(t)}, Username: user, Password: "x", DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Issue 11, item 1, on a real server: a NOPERM refusal of the group's
// creation ended Run only when its ctx ended. It must end Run at once,
// naming the command and the key.
func TestRunEndsAtOnceWhenRedisRefusesTheGroupsCreation(t *testing.T) {
	client := aclClient(t, "-xgroup")
	stream := uniqueStream(t, openRedis(t))
	c, err := safesync.NewConsumer(client, safesync.StreamConfig{Stream: stream, Group: "g", Consumer: "c", Block: 100 * time.Millisecond}, safesync.JSON[order]())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err = c.Run(ctx, func(context.Context, safesync.Message[order]) error { return nil })
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("Run = %v after %v, want a NOPERM error at once", err, time.Since(start).Round(time.Millisecond))
	}
	for _, want := range []string{"NOPERM", "XGROUP CREATE", stream} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
