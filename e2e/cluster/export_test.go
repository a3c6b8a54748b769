package cluster

// InstallAddons lets the external tests run the add-on step again.
var InstallAddons = installAddons
