"""The `ptjf` command line: the parser (`cli`) and one module per subcommand (`train`, `switch`,
`evaluate`, `demo`). The library never imports these; they import the library."""
