package io.paystream.kstreams;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.avro.Schema;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.state.Stores;

/**
 * The ledger's shape on Kafka Streams: the commands topic and the legs topic feed one
 * processor with one persistent RocksDB store (changelogged), under exactly_once_v2.
 *
 * <p>Arguments (all required): --bootstrap, --app-id, --prefix (topic name prefix, e.g.
 * "kstreams.abc."), --state-dir, --schemas (paystream's schemas/ directory) and the
 * registry ids of the three value schemas: --command-id, --event-id, --leg-id. Optional:
 * --commit-ms (100), --linger-ms (20), --fetch-wait-ms (20), --threads (1), and
 * --security-protocol with --sasl-mechanism and --sasl-user to authenticate as
 * paystream's clients do (SCRAM; the password comes from the environment variable
 * PAYSTREAM_KSTREAMS_SASL_PASSWORD, so it does not show in the process list).
 *
 * <p>Prints "STATE RUNNING" when the application is processing; exits on SIGTERM.
 */
public final class Main {
    private Main() {}

    static Map<String, String> parse(String[] args) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --name value pairs, got " + args[i]);
            }
            out.put(args[i].substring(2), args[i + 1]);
        }
        return out;
    }

    static String need(Map<String, String> a, String name) {
        String v = a.get(name);
        if (v == null) {
            throw new IllegalArgumentException("missing --" + name);
        }
        return v;
    }

    static Schema schema(Path dir, String file) throws IOException {
        return new Schema.Parser().parse(Files.readString(dir.resolve(file)));
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> a = parse(args);
        String prefix = need(a, "prefix");
        Path schemas = Path.of(need(a, "schemas"));
        Codec codec = new Codec(
                schema(schemas, "command.avsc"), Integer.parseInt(need(a, "command-id")),
                schema(schemas, "ledger_event.avsc"), Integer.parseInt(need(a, "event-id")),
                schema(schemas, "leg.avsc"), Integer.parseInt(need(a, "leg-id")));

        String commands = prefix + "payments.commands";
        String legs = prefix + "ledger.legs";
        String events = prefix + "ledger.events";

        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, need(a, "app-id"));
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, need(a, "bootstrap"));
        p.put(StreamsConfig.STATE_DIR_CONFIG, new File(need(a, "state-dir")).getAbsolutePath());
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Integer.parseInt(a.getOrDefault("commit-ms", "100")));
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(a.getOrDefault("threads", "1")));
        // cross-topic alignment off: a task processes whatever input it has
        p.put(StreamsConfig.MAX_TASK_IDLE_MS_CONFIG, -1L);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG),
                Integer.parseInt(a.getOrDefault("linger-ms", "20")));
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG),
                Integer.parseInt(a.getOrDefault("fetch-wait-ms", "20")));
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        String protocol = a.getOrDefault("security-protocol", "PLAINTEXT");
        if (!protocol.equals("PLAINTEXT")) {
            String password = System.getenv("PAYSTREAM_KSTREAMS_SASL_PASSWORD");
            if (password == null) {
                throw new IllegalArgumentException("PAYSTREAM_KSTREAMS_SASL_PASSWORD is not set");
            }
            p.put("security.protocol", protocol);
            p.put("sasl.mechanism", need(a, "sasl-mechanism"));
            p.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required username=\""
                    + need(a, "sasl-user") + "\" password=\"" + password + "\";");
        }

        Topology t = new Topology();
        t.addSource("commands", Serdes.String().deserializer(), Serdes.ByteArray().deserializer(), commands);
        t.addSource("legs-in", Serdes.String().deserializer(), Serdes.ByteArray().deserializer(), legs);
        // one processor over both topics: an account's commands and legs meet one store
        t.addProcessor("ledger", () -> new LedgerProcessor(codec, commands), "commands", "legs-in");
        t.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(LedgerProcessor.STORE), Serdes.String(), Serdes.ByteArray()),
                "ledger");
        t.addSink(LedgerProcessor.EVENTS_SINK, events, Serdes.String().serializer(),
                Serdes.ByteArray().serializer(), "ledger");
        t.addSink(LedgerProcessor.LEGS_SINK, legs, Serdes.String().serializer(),
                Serdes.ByteArray().serializer(), "ledger");

        KafkaStreams streams = new KafkaStreams(t, p);
        CountDownLatch done = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            System.out.println("STATE " + now);
            System.out.flush();
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                    .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            done.countDown();
        }));
        streams.start();
        done.await();
        streams.close();
        KafkaStreams.State end = streams.state();
        System.exit(end == KafkaStreams.State.ERROR ? 1 : 0);
    }
}
