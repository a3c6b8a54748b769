package meshctl

import (
	"fmt"
	"time"
)

// timeLeft is how long until a certificate expires, or its margin, for a
// person, the same in `ca show` and `check`: days and hours from two days
// on, else as Go prints a duration, to the second. It truncates, so it
// never shows more time than is left.
func timeLeft(d time.Duration) string {
	if d < 48*time.Hour {
		return d.Truncate(time.Second).String()
	}
	days := d / (24 * time.Hour)
	return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
}
