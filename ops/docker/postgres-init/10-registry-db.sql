-- Run once by the postgres image on an empty volume (docker-compose.yml).
-- Apicurio Registry keeps its schemas here (SQL storage), as `paystream stack up` does.
CREATE DATABASE registry OWNER paystream;
