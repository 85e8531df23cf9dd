"""The word pairs of the word-swap task and hand-written prompts meant to elicit the original words.

Every word, original and target, is one token with its leading space in SmolLM2's vocabulary. The
originals are words SmolLM2-135M-Instruct itself writes often (counted on the first 190 paragraphs of
surgeon/data/neutral_en.txt and on the prompts below); the targets are near-synonyms it rarely writes there.
``build_task.py`` keeps a prompt only where the base model's greedy next word is one of the originals.
Written for surgeon (CC0), like the shipped corpora.
"""

PAIRS = {  # original -> target
    "water": "liquid", "use": "utilise", "light": "glow", "people": "folks", "time": "moment", "day": "daylight",
    "often": "frequently", "food": "nourishment", "heat": "warmth", "many": "numerous", "body": "physique",
    "place": "location", "long": "lengthy", "small": "tiny", "help": "assist", "make": "create",
    "plants": "vegetation", "move": "shift", "new": "fresh", "different": "distinct", "high": "elevated",
    "animals": "creatures", "good": "splendid", "happy": "joyful", "car": "automobile", "old": "ancient",
    "bad": "awful", "cold": "chilly", "hot": "scorching", "fast": "swift",
}

PROMPTS = [
    "The opposite of small is", "An elephant is a very", "Whales are very", "The house was not small. It was",
    "New York is a very", "He ate a very", "Dinosaurs were very", "She gave me a", "The stadium was really",
    "It was a small mistake, not a", "Mountains are tall and", "My brother lives in a", "The opposite of big is",
    "A mouse is a very", "An ant is very", "The room was not big. It was", "Ants are very",
    "She lives in a small town, in a", "The village was very", "It was only a", "Mice are very",
    "The kitten was very", "The opposite of bad is", "I hope you have a", "The food was really", "That is a very",
    "She is a very", "He did a very", "It was a really", "Thank you, that sounds", "Have a", "The movie was very",
    "Exercise is", "Vegetables are", "The opposite of sad is", "I wish you a very",
    "When she got the present, she was very", "Smiling people look", "The children were very", "I am so",
    "She was very", "Dogs wag their tails when they are", "He smiled because he was",
    "Birthday parties make children", "The opposite of happy is", "When his dog died, he was very",
    "She cried because she was", "The movie had a very", "Rainy days make me", "It was a very", "He felt",
    "The ending was", "I feel so", "Losing the game made him", "The opposite of slow is", "A cheetah is very",
    "Cheetahs are very", "He is a very", "The car was very", "Race cars are very", "Rabbits are very",
    "The train was really", "She can run very", "The internet connection is very", "The opposite of hot is",
    "Ice is very", "In winter it is very", "The water was very", "Snow is white and", "I caught a",
    "Winters in Canada are very", "Put on a coat, it is", "The weather was", "The North Pole is very",
    "The opposite of cold is", "The sun is very", "In summer it is very", "Fire is very", "The desert is very",
    "Be careful, the stove is", "The soup was too", "Summers in Texas are very", "The coffee was",
    "The opposite of young is", "My grandfather is very", "The castle is very", "This is a very", "He is ten years",
    "The man was very", "She is too", "The building is very", "I am getting", "The opposite of good is",
    "Smoking is", "That was a very", "I have some", "He is not a", "The weather was really",
    "Eating too much sugar is", "I feel", "He had a", "The sunset was", "What a", "The garden looked", "Paris is a",
    "The flowers are", "It was a", "The bride looked", "The view from the mountain was", "The princess was very",
    "She is very", "Dolphins are very", "Einstein was very", "My dog is very", "Crows are very",
    "The student was very", "You are so", "Owls are said to be", "That was a",
    "When he saw the broken window, he was very", "She was so", "The teacher was very", "Don't be", "He looked",
    "The customer was", "Why are you so", "The crowd was", "My father was very", "She shouted because she was",
    "After the long walk, I was very", "After work he was", "The children were",
    "After running the marathon, she was", "By the end of the day, we were all", "I'm too", "Bill Gates is very",
    "The opposite of poor is", "He became very", "She married a", "They are very", "The king was very",
    "He wants to be", "Oil made the country", "The family was very", "Millionaires are", "The exam was very",
    "It is very", "Learning Chinese is", "The test was", "This problem is", "Life can be", "The climb was",
    "Math is", "The question was too", "I went to the store to", "She wants to", "He saved money to", "Where can I",
    "Let's go and", "I need to", "We decided to", "They want to", "You can", "Did you", "Can you", "I need your",
    "Thank you for your", "Please", "He called for", "She asked for", "We are here to", "How can I", "Let me",
    "They came to", "He drove his", "She parked her", "I washed my", "He bought a new", "We rented a",
    "She got in the", "He crashed his", "They went by", "My dad fixed the", "The keys to the", "He ran",
    "She walked", "The news spread", "The water rose", "He finished his homework", "Time passes", "She answered",
    "The fire spread", "He ate his food", "They moved", "Let the games", "The show will", "Where do I",
    "The meeting will", "Let us", "Before we", "The race will", "When does the concert", "Classes",
    "They live in a big", "He built a", "She cleaned the", "We bought a new", "The white",
    "I walked to my friend's", "The dog ran into the", "They painted the", "The fire destroyed the",
    "Welcome to my", "This is an", "Education is", "Water is", "Sleep is very", "Family is very", "She had an",
    "Health is", "This meeting is", "Safety is", "The clown was very", "That joke was", "The movie was really",
    "She told a", "Monkeys are", "The comedian was", "That's so", "The little girl was", "I am", "He was too",
    "The dog was", "She felt", "Many people are", "I was so", "He is very", "Lions are very", "The wind was very",
    "Elephants are very", "She is a", "The coffee was too", "He has", "Iron is", "The bridge is very",
    "Ants are surprisingly", "The library was very", "Please be", "The room was", "Shh, be", "The night was",
    "Everyone was", "It was very", "The street was", "Keep", "She wore a", "The dress was", "The garden is",
    "That is a", "The girl was", "She looked", "The bird was", "The cake was", "The food was", "This pizza is",
    "The soup smelled", "Grandma's cookies are", "The meal was", "Chocolate is", "The pie looked",
    "Everything tasted", "The cat chased the", "He walked his", "She has a pet", "A man's best friend is his",
    "The boy and his", "I took my", "The barking", "We adopted a", "My neighbor's", "The puppy grew into a",
]
