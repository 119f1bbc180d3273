-- Pausing a batch parks the lanes that hold its open jobs; resuming wakes
-- them. The lane remembers which batch parked it.
ALTER TABLE lanes ADD COLUMN paused_batch bigint REFERENCES batches (id);
CREATE INDEX lanes_paused ON lanes (paused_batch) WHERE paused_batch IS NOT NULL;
