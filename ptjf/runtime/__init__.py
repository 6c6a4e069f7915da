"""What a run needs from the machines it runs on: the device mesh and logical-axis rules
(`partitioning`), multi-host start-up (`distributed`), the peer watchdog (`watchdog`),
preemption (`preemption`), fault injection for tests (`faults`) and allocator settings
(`malloc_arenas`)."""
