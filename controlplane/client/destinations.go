package client

import (
	"context"
	"errors"
	"fmt"
)

// watchDestinations reads one destinations stream until it fails. Each
// message becomes a new table, published atomically; the last table stays
// when the stream ends.
func (c *Client) watchDestinations(ctx context.Context) (delivered bool, err error) {
	stream, err := c.api.WatchDestinations(ctx, c.request())
	if err != nil {
		return false, fmt.Errorf("client: open destinations stream: %w", err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return delivered, fmt.Errorf("client: destinations stream: %w", err)
		}
		c.m.messages.WithLabelValues(kindDestinations).Inc()
		if !delivered && !msg.GetSnapshot() {
			// A change can only be applied to the state it was computed
			// against; on a new stream the proxy's state may be another
			// replica's or stale, so the stream must start with the
			// whole state.
			return false, errors.New("client: destinations stream: the first message is not a snapshot")
		}
		if !delivered {
			c.m.connected.WithLabelValues(kindDestinations).Set(1)
		}
		nt, rej := c.dest.Load().apply(msg, c.cfg.TrustDomain)
		c.reject(kindDestinations, rej)
		c.publish(nt)
		delivered = true
	}
}

// publish makes t current and wakes whoever waits on the previous one.
// Only the destinations watch calls it, so there is one writer.
func (c *Client) publish(t *table) {
	old := c.dest.Swap(t)
	close(old.updated)
}
