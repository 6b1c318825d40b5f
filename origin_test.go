package safesync_test

import (
	"testing"

	"github.com/safesync-go/safesync"
)

func TestOriginIsTheOriginFieldsWhenBothArePresentElseTheEntryItself(t *testing.T) {
	cases := []struct {
		name       string
		fields     map[string]string
		stream, id string
	}{
		{"no origin", map[string]string{"data": "{}"}, "orders", "2-0"},
		{"both origin fields", map[string]string{"data": "{}", safesync.OriginFieldStream: "orders", safesync.OriginFieldID: "1-0"}, "orders", "1-0"},
		{"only the stream", map[string]string{safesync.OriginFieldStream: "orders"}, "orders", "2-0"},
		{"only the id", map[string]string{safesync.OriginFieldID: "1-0"}, "orders", "2-0"},
		{"empty values", map[string]string{safesync.OriginFieldStream: "", safesync.OriginFieldID: ""}, "orders", "2-0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := safesync.Message[struct{}]{Stream: "orders", ID: "2-0", Fields: c.fields}
			if s, id := m.Origin(); s != c.stream || id != c.id {
				t.Errorf("Origin() = %s %s, want %s %s", s, id, c.stream, c.id)
			}
		})
	}
}
