"""Stream plumbing shared by paystream's Kafka components (above the core, below them)."""
