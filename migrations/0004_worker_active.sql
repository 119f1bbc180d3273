-- Only workers holding lanes share a target's rate: an idle replica takes
-- nothing. See Store::worker_heartbeat and Worker::refresh_rates.
ALTER TABLE workers ADD COLUMN active boolean NOT NULL DEFAULT false;
