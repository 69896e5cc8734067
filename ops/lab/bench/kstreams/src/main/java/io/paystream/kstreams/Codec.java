package io.paystream.kstreams;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;

/**
 * Avro values in Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro
 * binary), with paystream's own schemas from schemas/*.avsc and the ids the registry gave
 * them (passed in by the bench; see ops/lab/bench/kstreams.py). Not Confluent's serializer:
 * that is not on Maven Central.
 */
final class Codec {
    final Schema command;
    final Schema event;
    final Schema leg;
    private final int commandId;
    private final int eventId;
    private final int legId;
    private final GenericDatumReader<GenericRecord> commandReader;
    private final GenericDatumReader<GenericRecord> legReader;
    private final GenericDatumWriter<GenericRecord> eventWriter;
    private final GenericDatumWriter<GenericRecord> legWriter;
    private BinaryDecoder decoder;
    private BinaryEncoder encoder;
    private final ByteArrayOutputStream out = new ByteArrayOutputStream(512);

    Codec(Schema command, int commandId, Schema event, int eventId, Schema leg, int legId) {
        this.command = command;
        this.event = event;
        this.leg = leg;
        this.commandId = commandId;
        this.eventId = eventId;
        this.legId = legId;
        GenericData plain = new GenericData();  // no logical-type conversions: uuids stay strings
        this.commandReader = new GenericDatumReader<>(command, command, plain);
        this.legReader = new GenericDatumReader<>(leg, leg, plain);
        this.eventWriter = new GenericDatumWriter<>(event, plain);
        this.legWriter = new GenericDatumWriter<>(leg, plain);
    }

    /** A per-task copy: readers, writers and buffers are not thread-safe. */
    Codec copy() {
        return new Codec(command, commandId, event, eventId, leg, legId);
    }

    GenericRecord decodeCommand(byte[] data) {
        return decode(data, commandId, commandReader);
    }

    GenericRecord decodeLeg(byte[] data) {
        return decode(data, legId, legReader);
    }

    byte[] encodeEvent(GenericRecord r) {
        return encode(r, eventId, eventWriter);
    }

    byte[] encodeLeg(GenericRecord r) {
        return encode(r, legId, legWriter);
    }

    private GenericRecord decode(byte[] data, int expected, GenericDatumReader<GenericRecord> reader) {
        if (data == null || data.length < 5 || data[0] != 0) {
            throw new IllegalArgumentException("not Confluent wire format");
        }
        int id = ByteBuffer.wrap(data, 1, 4).getInt();
        if (id != expected) {
            // The bench writes with the very schemas it passed the ids of; another id would
            // need the registry and schema resolution, which this peer does not do.
            throw new IllegalArgumentException("schema id " + id + ", expected " + expected);
        }
        decoder = DecoderFactory.get().binaryDecoder(data, 5, data.length - 5, decoder);
        try {
            return reader.read(null, decoder);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private byte[] encode(GenericRecord r, int id, GenericDatumWriter<GenericRecord> writer) {
        out.reset();
        out.write(0);
        out.write(id >>> 24);
        out.write(id >>> 16);
        out.write(id >>> 8);
        out.write(id);
        encoder = EncoderFactory.get().binaryEncoder(out, encoder);
        try {
            writer.write(r, encoder);
            encoder.flush();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toByteArray();
    }
}
