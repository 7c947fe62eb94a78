-- Run once by the PostgreSQL image on an empty volume, as the POSTGRES_USER (auditflow), in
-- POSTGRES_DB (auditflow_gateway): the processor's database beside it. Each service owns its
-- database and migrates it (`python -m auditflow.migrations SERVICE upgrade URL`).
CREATE DATABASE auditflow_processor OWNER auditflow;
