package cluster

// InstallAddons lets the external tests run the add-on step again.
var InstallAddons = installAddons

// SetReservePorts replaces how Start picks its ports until restore is
// called; next is the real reservation.
func SetReservePorts(f func(n int, next func(int) ([]int, error)) ([]int, error)) (restore func()) {
	reservePorts = func(n int) ([]int, error) { return f(n, freePorts) }
	return func() { reservePorts = freePorts }
}
